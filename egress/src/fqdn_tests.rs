//! Name matching, table-driven: Cilium's documented examples and the
//! corners of its matchpattern semantics.

use meshgate_model::policy::FqdnMatch;

use crate::fqdn::NameMatch;

/// (matchName or matchPattern as written, names matched, names not matched).
const PATTERNS: &[(&str, &[&str], &[&str])] = &[
    // Cilium docs: `*` within one label, not the apex nor deeper.
    (
        "*.cilium.io",
        &["sub.cilium.io", "anysub.cilium.io.", "SUB.Cilium.IO"],
        &[
            "cilium.io",
            "sub.sub.cilium.io",
            ".cilium.io",
            "sub.ci.io",
            "anysub.ciliumandmore.io",
        ],
    ),
    // Cilium docs: `*` inside a label, zero or more characters.
    (
        "part*ial.com",
        &["partial.com", "part-extra-ial.com"],
        &["partia.com", "part.ial.com"],
    ),
    (
        "sub*.cilium.io",
        &["sub.cilium.io", "subdomain.cilium.io"],
        &["asub.cilium.io", "sub.a.cilium.io", "cilium.io"],
    ),
    (
        "special*service.api.cilium.io",
        &[
            "special-region1-service.api.cilium.io",
            "specialservice.api.cilium.io",
        ],
        &[
            "region1-service.api.cilium.io",
            "special.service.api.cilium.io",
        ],
    ),
    (
        "*.ci*.io",
        &[
            "anysub.cilium.io",
            "anysub.ci.io",
            "anysub.ciliumandmore.io",
        ],
        &["cilium.io", "a.b.cilium.io"],
    ),
    // Several `*` in one label (backtracking).
    (
        "a*b*c.io",
        &["abc.io", "axxbyyc.io", "abbbc.io", "acbc.io"],
        &["acb.io", "ab.io"],
    ),
    // SRV / DNS-SD names (`_`), and the Kubernetes service pattern of the docs.
    (
        "*.*.cilium.io",
        &["_foobar._tcp.cilium.io"],
        &["cilium.io", "a.cilium.io", "a.b.c.cilium.io"],
    ),
    (
        "*.*.svc.cluster.local",
        &["service.namespace.svc.cluster.local."],
        &["svc.cluster.local", "a.svc.cluster.local"],
    ),
    // `**.`: any depth of subdomain, never the apex.
    (
        "**.cilium.io",
        &["a.cilium.io", "a.b.cilium.io", "a.b.c.d.cilium.io."],
        &[
            "cilium.io",
            "xcilium.io",
            "a.cilium.com",
            "a.b.cilium.io.evil.com",
        ],
    ),
    (
        "**.*.cilium.io",
        &["a.b.cilium.io", "x.y.z.cilium.io"],
        &["a.cilium.io", "cilium.io"],
    ),
    ("**.Cilium.IO.", &["a.cilium.io"], &["cilium.io"]),
    // `*` alone: every name, and nothing that is not a name.
    (
        "*",
        &[
            "io",
            "cilium.io",
            "_foobar._tcp.cilium.io",
            "service.namespace.svc.cluster.local.",
            ".",
        ],
        &[".io", "a..b", "a b.com", "a/b.com", "*.com"],
    ),
    // A pattern without `*` is a name.
    (
        "cilium.io",
        &["cilium.io", "Cilium.IO."],
        &["sub.cilium.io", "cilium.io.com"],
    ),
];

const NAMES: &[(&str, &[&str], &[&str])] = &[
    (
        "cilium.io",
        &["cilium.io", "cilium.io.", "CILIUM.IO"],
        &["sub.cilium.io", "cilium.iox", "cilium", ""],
    ),
    (
        "My-Service.Example.COM.",
        &["my-service.example.com"],
        &["my_service.example.com"],
    ),
    (
        "_foobar._tcp.cilium.io",
        &["_foobar._tcp.cilium.io."],
        &["_tcp.cilium.io"],
    ),
];

fn check(m: &NameMatch, written: &str, accept: &[&str], reject: &[&str]) {
    for n in accept {
        assert!(m.matches(n), "{written:?} should match {n:?}");
    }
    for n in reject {
        assert!(!m.matches(n), "{written:?} should not match {n:?}");
    }
}

#[test]
fn patterns_match_as_in_cilium() {
    for (p, accept, reject) in PATTERNS {
        let m = NameMatch::pattern(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
        check(&m, p, accept, reject);
    }
}

#[test]
fn names_match_exactly_without_case_or_trailing_dot() {
    for (n, accept, reject) in NAMES {
        let m = NameMatch::name(n).unwrap_or_else(|e| panic!("{n:?}: {e}"));
        check(&m, n, accept, reject);
    }
}

#[test]
fn a_name_is_not_a_pattern() {
    let m = NameMatch::MatchName("*.cilium.io".into());
    assert!(!m.matches("a.cilium.io"));
}

#[test]
fn invalid_patterns_are_refused_by_the_policy_check() {
    for bad in ["", "a.**.io", "**", "***.a.io", "a..io", "a b.io", "[a].io"] {
        assert!(NameMatch::pattern(bad).is_err(), "{bad:?} refused");
    }
    assert!(NameMatch::name("*.a.io").is_err());
}

#[test]
fn normal_form_and_conversion() {
    assert_eq!(
        NameMatch::pattern("*.Example.COM."),
        Ok(NameMatch::MatchPattern("*.example.com".into()))
    );
    assert_eq!(
        NameMatch::from(FqdnMatch::Name("a.io".into())),
        NameMatch::MatchName("a.io".into())
    );
    assert_eq!(crate::fqdn::normalise("A.B."), "a.b");
    let json = serde_json::to_string(&[
        NameMatch::MatchName("a.io".into()),
        NameMatch::MatchPattern("*.a.io".into()),
    ])
    .expect("json");
    assert_eq!(json, r#"[{"matchName":"a.io"},{"matchPattern":"*.a.io"}]"#);
    assert_eq!(
        NameMatch::MatchPattern("*.a.io".into()).to_string(),
        "pattern *.a.io"
    );
}
