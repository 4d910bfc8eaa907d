//! Block, partition and impairment policy: kept by port name (so it can be set before a client
//! connects), compiled to port indices for the forwarding path.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::{Impairment, Target};

/// The policy as the user set it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    pub blocked: BTreeSet<String>,
    /// `None` = healed (everyone in one group).
    pub groups: Option<Vec<Vec<String>>>,
    pub impairments: BTreeMap<Target, Impairment>,
}

impl Policy {
    /// Human-readable lines for the summary.
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.blocked.is_empty() {
            out.push(format!(
                "blocked: {}",
                self.blocked.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(groups) = &self.groups {
            let g: Vec<String> = groups
                .iter()
                .map(|g| format!("[{}]", g.join(", ")))
                .collect();
            out.push(format!("partition: {} (others together)", g.join(" | ")));
        }
        for (t, i) in &self.impairments {
            out.push(format!("impairment {t}: {i}"));
        }
        out
    }
}

/// The policy resolved to port indices.
#[derive(Debug, Default)]
pub(crate) struct Compiled {
    pub blocked: Vec<bool>,
    /// Partition group per port; ports named in no group share group 0.
    pub group: Vec<u32>,
    pub port_imp: Vec<Option<Impairment>>,
    pub pair_imp: HashMap<(u32, u32), Impairment>,
    /// Any impairment at all (the forwarding fast path skips the checks otherwise).
    pub any_imp: bool,
}

impl Compiled {
    /// `names[i]` is the name of port index `i` (`None` for an unused slot).
    pub(crate) fn build(policy: &Policy, names: &[Option<&str>]) -> Self {
        let index: HashMap<&str, u32> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (n, i as u32)))
            .collect();
        let n = names.len();
        let mut c = Compiled {
            blocked: vec![false; n],
            group: vec![0; n],
            port_imp: vec![None; n],
            pair_imp: HashMap::new(),
            any_imp: false,
        };
        for b in &policy.blocked {
            if let Some(i) = index.get(b.as_str()) {
                c.blocked[*i as usize] = true;
            }
        }
        if let Some(groups) = &policy.groups {
            for (g, members) in groups.iter().enumerate() {
                for m in members {
                    if let Some(i) = index.get(m.as_str()) {
                        c.group[*i as usize] = g as u32 + 1;
                    }
                }
            }
        }
        for (t, imp) in &policy.impairments {
            if imp.is_none() {
                continue;
            }
            match t {
                Target::Port(p) => {
                    if let Some(i) = index.get(p.as_str()) {
                        c.port_imp[*i as usize] = Some(*imp);
                        c.any_imp = true;
                    }
                }
                Target::Pair(a, b) => {
                    if let (Some(a), Some(b)) = (index.get(a.as_str()), index.get(b.as_str())) {
                        c.pair_imp.insert(pair_key(*a, *b), *imp);
                        c.any_imp = true;
                    }
                }
            }
        }
        c
    }
}

/// Unordered pair key.
pub(crate) fn pair_key(a: u32, b: u32) -> (u32, u32) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_by_name() {
        let mut p = Policy::default();
        p.blocked.insert("b".into());
        p.groups = Some(vec![vec!["a".into()], vec!["c".into()]]);
        p.impairments.insert(
            Target::Pair("c".into(), "a".into()),
            Impairment::none().loss(0.5),
        );
        p.impairments
            .insert(Target::Port("zz".into()), Impairment::none().loss(0.5));
        let c = Compiled::build(&p, &[Some("a"), Some("b"), None, Some("c"), Some("d")]);
        assert_eq!(c.blocked, [false, true, false, false, false]);
        assert_eq!(c.group, [1, 0, 0, 2, 0]);
        assert!(c.any_imp);
        assert_eq!(c.pair_imp.get(&pair_key(3, 0)).unwrap().loss, 0.5);
        assert!(c.port_imp.iter().all(Option::is_none));
    }
}
