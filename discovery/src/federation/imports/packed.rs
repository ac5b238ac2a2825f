//! A label set kept compactly: sorted `(key, value)` pairs in one boxed
//! slice. Imports hold one per remote identity (~50 per remote in the mesh
//! benchmark, ~254 remotes at N = 255); a `BTreeMap` spends a whole leaf
//! (~0.5 KB, room for 11 pairs) on the 3 or 4 labels of each.

use crate::identity::Labels;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PackedLabels(Box<[(Box<str>, Box<str>)]>);

impl PackedLabels {
    pub(super) fn of(labels: &Labels) -> PackedLabels {
        // A BTreeMap iterates in key order: the pairs come out sorted.
        PackedLabels(
            labels
                .iter()
                .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
                .collect(),
        )
    }

    pub(super) fn unpack(&self) -> Labels {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Whether this is `labels` (without unpacking).
    pub(super) fn is(&self, labels: &Labels) -> bool {
        self.0.len() == labels.len()
            && self
                .0
                .iter()
                .zip(labels)
                .all(|((k, v), (lk, lv))| **k == **lk && **v == **lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn round_trips_and_compares_as_the_map() {
        let sets = [
            labels(&[]),
            labels(&[("app", "web")]),
            labels(&[("app", "web"), ("tier", "front")]),
            // Inserted out of order: still compared by content.
            labels(&[
                ("z", "1"),
                ("a", "2"),
                ("io.kubernetes.pod.namespace", "default"),
            ]),
            labels(&[("app", "web"), ("tier", "back")]),
            labels(&[("app", "webtier"), ("", "front")]),
        ];
        for a in &sets {
            let p = PackedLabels::of(a);
            assert_eq!(&p.unpack(), a);
            for b in &sets {
                assert_eq!(p.is(b), a == b, "{a:?} vs {b:?}");
                assert_eq!(p == PackedLabels::of(b), a == b);
            }
        }
    }
}
