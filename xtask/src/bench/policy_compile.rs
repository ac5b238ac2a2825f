//! `cargo xtask bench policy-compile`: compiling identity policy into map entries
//! at about 10,000 entries (`discovery/examples/policy_bench.rs`), from
//! scratch and as single-change diffs, beside a plain `HashMap` fill of the
//! same entries measured in the same run.

use anyhow::{bail, Result};
use serde_json::Value;

use super::example;
use super::report::{self, Machine};
use crate::util::Steps;

pub fn run(args: &[&str]) -> Result<()> {
    if !args.is_empty() {
        bail!("cargo xtask bench policy-compile takes no arguments");
    }
    let mut steps = Steps::new(3);
    steps.step("build policy_bench (release)", || {
        example::build("policy_bench")
    })?;
    let load = report::load_average();
    let result = steps.step("compile 10,000 entries", || {
        let (v, status) = example::run("policy_bench", &[])?;
        if let Some(e) = v["error"].as_str().or(v["cidr"]["error"].as_str()) {
            bail!("policy_bench failed: {e}");
        }
        if !status.success() {
            bail!("policy_bench exited with {status}");
        }
        Ok(v)
    })?;
    let machine = Machine::detect();
    let table = table(&result);
    println!("\npolicy-compile, on {machine}, load average {load} before\n\n{table}");
    steps.step("docs/benchmarks.md", || {
        report::write_section("policy-compile", &section(&machine, &load, &table))
    })
}

fn us(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |s| format!("{:.1}", s * 1e6))
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or_else(|| "—".into(), |r| format!("{r:.4}"))
}

fn table(r: &Value) -> String {
    let mut t = String::from("| figure | µs | ratio |\n|---|---:|---:|\n");
    t.push_str(&format!(
        "| anchor: HashMap fill of the {} entries | {} | 1 |\n",
        r["entries"],
        us(&r["anchor_hashmap_fill_s"])
    ));
    t.push_str(&format!(
        "| full compile ({} policies, {} identities) | {} | {} × anchor |\n",
        r["policies"],
        r["identities"],
        us(&r["compile_s"]),
        ratio(&r["compile_vs_anchor"])
    ));
    t.push_str(&format!(
        "| PolicyState built from empty | {} | {} × full compile |\n",
        us(&r["state_from_empty_s"]),
        ratio(&r["state_from_empty_vs_compile"])
    ));
    t.push_str(&format!("| parse the YAML | {} | |\n", us(&r["parse_s"])));
    for (key, name) in [
        ("change_policy", "one policy changed (a port)"),
        ("add_local_identity", "a local identity added"),
        ("add_remote_identity", "a remote identity added"),
        ("remove_policy", "a policy removed"),
    ] {
        let o = &r[key];
        t.push_str(&format!(
            "| {name}: diff of {} items | {} | {} × full compile |\n",
            o["diff_items"],
            us(&o["seconds"]),
            ratio(&o["vs_full_compile"])
        ));
    }
    let c = &r["cidr"];
    t.push_str(&format!(
        "\nCIDR rules: {} /32 prefixes, {} entries.\n\n| figure | µs | ratio |\n|---|---:|---:|\n\
         | anchor: HashMap fill of the {} entries | {} | 1 |\n\
         | collect the prefixes of the policies | {} | |\n\
         | number the CIDR identities, with labels | {} | |\n\
         | full compile with the CIDR identities | {} | {} × anchor |\n\
         | the CIDR identities added one by one to a PolicyState | {} | {} × full compile |\n",
        c["prefixes"],
        c["entries"],
        c["entries"],
        us(&c["anchor_hashmap_fill_s"]),
        us(&c["collect_prefixes_s"]),
        us(&c["number_and_label_s"]),
        us(&c["compile_s"]),
        ratio(&c["compile_vs_anchor"]),
        us(&c["state_add_identities_s"]),
        ratio(&c["state_add_identities_vs_compile"]),
    ));
    t
}

fn section(machine: &Machine, load: &str, table: &str) -> String {
    format!(
        "Measured {date} on {machine} with `cargo xtask bench policy-compile`\n\
         (1-minute load average {load} before the run).\n\n\
         `discovery/examples/policy_bench.rs`: two clusters of 500 identities, 50\n\
         CiliumNetworkPolicies each selecting 5 local identities and allowing 2 ports\n\
         from 20 peers (10 local, 10 remote by cluster label): 10,000 entries. Each\n\
         figure is the median of 21 runs, in one process. The anchor is the floor of\n\
         any compiler: inserting the same 10,000 entries into a `HashMap`. Only the\n\
         compile and diff cost is measured, not writing the BPF maps. CIDR rules: one\n\
         policy allowing one identity egress to 10,000 /32 prefixes (10,000 CIDR\n\
         identities, the agent's path when they appear).\n\n{table}",
        date = report::today()
    )
}
