//! What meshgate reads from the Kubernetes API: one [`Watched`] per
//! resource, used both by the watchers ([`super::watch`]) and by the test
//! that checks the deploy manifests' RBAC (`deploy/kubernetes/`), so the
//! ClusterRoles grant exactly what the code reads.

use kube::core::ApiResource;

/// A resource a component lists and watches (the kube watcher's two verbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watched {
    /// The API group (`""` for the core group).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in URLs and RBAC rules.
    pub plural: &'static str,
    pub namespaced: bool,
}

impl Watched {
    /// The verbs a watcher of it uses ([`super::watch::spawn`]: a list, then
    /// watches from its resourceVersion).
    pub const VERBS: [&'static str; 2] = ["list", "watch"];

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The dynamic API resource the watcher uses.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

pub const NODES: Watched = Watched {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    namespaced: false,
};
pub const PODS: Watched = Watched {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    namespaced: true,
};
pub const NAMESPACES: Watched = Watched {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
pub const NETWORK_POLICIES: Watched = Watched {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    namespaced: true,
};
pub const CILIUM_NETWORK_POLICIES: Watched = Watched {
    group: "cilium.io",
    version: "v2",
    kind: "CiliumNetworkPolicy",
    plural: "ciliumnetworkpolicies",
    namespaced: true,
};
pub const CILIUM_CLUSTERWIDE_POLICIES: Watched = Watched {
    group: "cilium.io",
    version: "v2",
    kind: "CiliumClusterwideNetworkPolicy",
    plural: "ciliumclusterwidenetworkpolicies",
    namespaced: false,
};
pub const CILIUM_EGRESS_GATEWAY_POLICIES: Watched = Watched {
    group: "cilium.io",
    version: "v2",
    kind: "CiliumEgressGatewayPolicy",
    plural: "ciliumegressgatewaypolicies",
    namespaced: false,
};

/// Every policy kind the agent applies, in the order they are parsed.
pub const POLICIES: [Watched; 4] = [
    NETWORK_POLICIES,
    CILIUM_NETWORK_POLICIES,
    CILIUM_CLUSTERWIDE_POLICIES,
    CILIUM_EGRESS_GATEWAY_POLICIES,
];

/// Everything the agent (`--inventory kubernetes`) watches: its node, the
/// pods on it, the namespaces, and every policy kind.
pub fn agent() -> Vec<Watched> {
    let mut all = vec![NODES, PODS, NAMESPACES];
    all.extend(POLICIES);
    all
}
pub const SERVICES: Watched = Watched {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    namespaced: true,
};
pub const SERVICE_EXPORTS: Watched = Watched {
    group: "multicluster.x-k8s.io",
    version: "v1alpha1",
    kind: "ServiceExport",
    plural: "serviceexports",
    namespaced: true,
};

pub const MESHGATE_REMOTE_CLUSTERS: Watched = Watched {
    group: "meshgate.io",
    version: "v1alpha1",
    kind: "MeshgateRemoteCluster",
    plural: "meshgateremoteclusters",
    namespaced: false,
};

/// Everything discovery (`--inventory kubernetes`) watches: the Services,
/// MCS's ServiceExports and the MeshgateRemoteClusters.
pub fn discovery() -> Vec<Watched> {
    vec![SERVICES, SERVICE_EXPORTS, MESHGATE_REMOTE_CLUSTERS]
}
