//! The JSON fixtures of the Kubernetes tests, written in the API's own
//! shapes (as `kubectl get -o json` prints them), and a reader.

use kube::api::DynamicObject;
use serde_json::Value;

use super::mirror::{self, Objects};

/// The objects of a fixture list of `kind`, as a list from the API server
/// gives them (items without `apiVersion` and `kind`).
#[allow(clippy::unwrap_used)]
pub fn objects(fixture: &str, kind: &str) -> Objects {
    let v: Value = serde_json::from_str(fixture).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind)
        .map(|i| {
            let mut i = i.clone();
            let m = i.as_object_mut().unwrap();
            m.remove("kind");
            m.remove("apiVersion");
            let o: DynamicObject = serde_json::from_value(i).unwrap();
            (mirror::key(&o), o)
        })
        .collect()
}

pub const NODES: &str = include_str!("fixtures/nodes.json");
pub const PODS: &str = include_str!("fixtures/pods.json");
pub const NAMESPACES: &str = include_str!("fixtures/namespaces.json");
pub const SERVICES: &str = include_str!("fixtures/services.json");
pub const POLICIES: &str = include_str!("fixtures/policies.json");
