//! Discovery's `--services FILE`: a YAML list of this cluster's services
//! (`{name, namespace, ports: [{name, port, protocol}], selector,
//! annotations, export}`), checked at start so a wrong file stops discovery
//! with the file and the service named.

use std::path::Path;

use anyhow::Context;
use meshgate_model::service::{validate_all, Service};

/// Parses and checks the file's text; `what` names the file in errors.
pub fn parse(text: &str, what: &str) -> anyhow::Result<Vec<Service>> {
    let services: Vec<Service> = if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_yaml::from_str(text).with_context(|| {
            format!(
                "{what}: not a YAML list of services {{name, namespace, ports, selector, \
                 annotations, export}}"
            )
        })?
    };
    validate_all(&services).with_context(|| format!("{what}: invalid service"))?;
    Ok(services)
}

pub fn load(path: &Path) -> anyhow::Result<Vec<Service>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading services file {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_cilium_like_fields() {
        let text = r#"
- name: web
  ports: [{name: http, port: 80}]
  selector: {app: web}
  annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local}
- name: db
  namespace: data
  ports: [{port: 5432, protocol: TCP}]
  selector: {app: db}
  export: true
"#;
        let s = parse(text, "f.yaml").unwrap();
        assert_eq!(s[0].namespace, "default");
        assert!(s[0].is_global().unwrap());
        assert!(s[1].exported);
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = parse(
            "- name: web\n  ports: [{port: 80}]\n  colour: red\n",
            "f.yaml",
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("f.yaml") && msg.contains("colour"), "{msg}");
        let err = parse(
            "- name: web\n  ports: [{port: 80}]\n  annotations: {service.cilium.io/affinity: near}\n",
            "f.yaml",
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("f.yaml") && msg.contains("near") && msg.contains("default/web"),
            "{msg}"
        );
    }
}
