//! The `dns:` section: defaults, record shapes, and errors naming the field.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::dns_server::ZoneRecord;

fn with_dns(dns: &str, datapath: &str) -> String {
    format!(
        r#"
name: d
datapath: {datapath}
clusters:
  - name: c1
    id: 1
    podCIDR: 10.1.0.0/16
    nodes:
      - name: n1
        pods: [{{name: a}}]
externals:
  - {{name: api, ip: 203.0.113.10}}
dns:
{dns}"#
    )
}

fn errors(yaml: &str) -> Vec<String> {
    match Scenario::parse("t.yaml", yaml) {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(ScenarioError::Invalid { errors, .. }) => {
            errors.iter().map(|e| e.to_string()).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

fn has(dns: &str, needle: &str) {
    let errs = errors(&with_dns(dns, "ebpf"));
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "no error containing {needle:?} in {errs:#?}"
    );
}

const RECORDS: &str = r#"  minTTL: 0
  records:
    api.example.com: [203.0.113.10]
    short.example.com: {addresses: [203.0.113.11], ttl: 2}
    www.example.com: {cname: api.example.com}
    many.example.com: {range: 198.18.0.1, count: 1000}
    rotate.example.com: {range: 198.18.8.1, count: 64, rotate: true}
"#;

#[test]
fn the_documented_records_parse_with_defaults() {
    let s = Scenario::parse("t.yaml", &with_dns(RECORDS, "ebpf")).unwrap();
    let d = s.dns.as_ref().unwrap();
    assert_eq!(d.server, dns::DEFAULT_SERVER);
    assert_eq!(d.cluster_ip, dns::DEFAULT_CLUSTER_IP);
    assert_eq!(d.min_ttl, Some(0));
    let r = dns::records(d).unwrap();
    assert_eq!(
        r["api.example.com"],
        ZoneRecord::A {
            addresses: vec!["203.0.113.10".parse().unwrap()],
            ttl: 30,
            rotate: false
        }
    );
    assert_eq!(r["short.example.com"].ttl(), 2);
    assert_eq!(
        r["www.example.com"],
        ZoneRecord::Cname {
            target: "api.example.com".into(),
            ttl: 30
        }
    );
    assert_eq!(
        r["rotate.example.com"],
        ZoneRecord::Range {
            start: "198.18.8.1".parse().unwrap(),
            count: 64,
            ttl: 30,
            rotate: true
        }
    );
    assert_eq!(r["many.example.com"].address_count(), 1000);
    // An empty section: the defaults, no records.
    let s = Scenario::parse("t.yaml", &with_dns("  {}\n", "ebpf")).unwrap();
    assert!(s.dns.unwrap().records.is_empty());
}

#[test]
fn dns_needs_the_ebpf_datapath() {
    let errs = errors(&with_dns(RECORDS, "plain"));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("dns: `dns:` runs a DNS proxy")
                && e.contains("set `datapath: ebpf`")),
        "{errs:#?}"
    );
}

#[test]
fn bad_records_name_their_field() {
    has(
        "  records:\n    a.example: [2001:db8::1]\n",
        "dns.records[\"a.example\"][0]: \"2001:db8::1\" is not an IPv4 address",
    );
    has(
        "  records:\n    a.example: {addresses: [1.2.3.4], ttl: -1}\n",
        "dns.records[\"a.example\"].ttl: -1 is not a TTL",
    );
    has(
        "  records:\n    a.example: {range: 10.0.0.1, count: 0}\n",
        "dns.records[\"a.example\"].count: 0 is not in 1..=65536",
    );
    has(
        "  records:\n    a.example: {range: 10.0.0.1, count: 65537, rotate: true}\n",
        "dns.records[\"a.example\"].count: 65537 is not in 1..=65536",
    );
    has(
        "  records:\n    a.example: {range: 10.0.0.1}\n",
        "dns.records[\"a.example\"].count: a range needs count",
    );
    has(
        "  records:\n    a.example: {range: 10.0.0.1, count: 5000}\n",
        "5000 addresses in one answer",
    );
    has(
        "  records:\n    a.example: {range: nope, count: 2}\n",
        "dns.records[\"a.example\"].range: \"nope\" is not an IPv4 address",
    );
    has(
        "  records:\n    a.example: {cname: b.example, addresses: [1.2.3.4]}\n",
        "dns.records[\"a.example\"]: addresses, cname are exclusive",
    );
    has(
        "  records:\n    a.example: {adresses: [1.2.3.4]}\n",
        "dns.records[\"a.example\"]: unknown field \"adresses\"",
    );
    has(
        "  records:\n    a.example: 1.2.3.4\n",
        "dns.records[\"a.example\"]: \"1.2.3.4\" is not a record",
    );
    has(
        "  records:\n    a.example: {cname: b.example, rotate: true}\n    b.example: [1.2.3.4]\n",
        "dns.records[\"a.example\"].rotate: rotate does not go with cname",
    );
    has(
        "  records:\n    bad_name!.example: [1.2.3.4]\n",
        "dns.records[\"bad_name!.example\"]: \"bad_name!.example\" is not a DNS name",
    );
    has(
        "  records:\n    a.example: {cname: b.example}\n    b.example: {cname: A.example.}\n",
        "dns.records[\"a.example\"]: a.example: CNAME loop a.example -> b.example -> a.example",
    );
    has(
        "  records:\n    a.example: {cname: gone.example}\n",
        "dns.records[\"a.example\"]: a.example: cname target \"gone.example\" is not among the records",
    );
    has(
        "  records:\n    A.example: [1.2.3.4]\n    a.example.: [1.2.3.5]\n",
        "given twice",
    );
}

#[test]
fn the_two_addresses_are_checked() {
    has(
        "  server: 203.0.113.10\n",
        "dns.server: 203.0.113.10 is already used by externals[0]",
    );
    has(
        "  server: 198.18.0.53\n",
        "dns.server: 198.18.0.53 is inside 198.18.0.0/15",
    );
    has(
        "  server: 10.1.2.3\n",
        "dns.server: 10.1.2.3 is inside 10.1.0.0/16, the podCIDR",
    );
    has(
        "  clusterIP: 10.96.1.10\n",
        "dns.clusterIP: 10.96.1.10 is inside 10.96.1.0/24, where the lab gives cluster \"c1\"'s services",
    );
    has(
        "  clusterIP: 169.254.53.53\n",
        "dns.clusterIP: 169.254.53.53 is inside 169.254.0.0/16",
    );
    has(
        "  clusterIP: 203.0.113.10\n",
        "dns.clusterIP: 203.0.113.10 is already used by externals[0]",
    );
    has(
        "  server: 203.0.113.99\n  clusterIP: 203.0.113.99\n",
        "dns.clusterIP: 203.0.113.99 is already used by dns.server",
    );
    let errs = errors(&with_dns("  servr: 1.2.3.4\n", "ebpf"));
    assert!(errs[0].contains("unknown field `servr`"), "{errs:#?}");
}

#[test]
fn shipped_fqdn_files_parse_and_fail_only_on_policies_the_parser_does_not_read_yet() {
    for file in ["fqdn.yaml", "fqdn-egress.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        match Scenario::load(&path) {
            Ok(s) => assert!(s.dns.is_some(), "{file}"),
            Err(ScenarioError::Invalid { errors, .. }) => {
                for e in &errors {
                    assert!(e.field.starts_with("policies["), "{file}: {e}");
                }
            }
            Err(e) => panic!("{file}: {e}"),
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let s: Scenario = serde_yaml::from_str(&text).unwrap();
        let records = dns::records(s.dns.as_ref().unwrap()).unwrap();
        assert!(records.contains_key("api.example.com"), "{file}");
    }
}
