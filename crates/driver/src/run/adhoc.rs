//! Machines made at run time (NixOS `create_machine`).

use std::sync::Arc;

use super::setup::{booting, build_machine};
use super::TestRun;
use crate::error::{Error, Result};
use crate::machine::Machine;

impl TestRun {
    /// Creates an ad-hoc machine (NixOS `create_machine`) from a node configuration that was not
    /// declared; it gets the next free node number and is attached to the configured VLANs that
    /// exist in this test. It is not started.
    pub fn create_machine(
        &self,
        name: &str,
        config: machinist_guest::NodeConfig,
    ) -> Result<Arc<Machine>> {
        if self.get_machine(name).is_ok() {
            return Err(Error::Invalid(format!(
                "a machine named `{name}` already exists"
            )));
        }
        let m = self.adhoc_machine(name, config)?;
        self.ctx.boots.register(booting(&m));
        self.extra
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(m.clone());
        Ok(m)
    }

    /// Ad-hoc machines are numbered after every existing machine: the plan is built over keys
    /// that sort in that order, with each node's hostname pinned to its real name.
    fn adhoc_machine(
        &self,
        name: &str,
        mut config: machinist_guest::NodeConfig,
    ) -> Result<Arc<Machine>> {
        let mut all: Vec<(String, machinist_guest::NodeConfig)> = Vec::new();
        for (n, c) in &self.plan_nodes {
            all.push((n.clone(), c.clone()));
        }
        for m in self.extra.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(c) = &m.adhoc_config {
                all.push((m.name().to_string(), c.clone()));
            }
        }
        // Only VLANs that exist in this test.
        config.vlans.retain(|v| self.vlans.contains_key(v));
        all.push((name.to_string(), config.clone()));
        let keyed: Vec<(String, machinist_guest::NodeConfig)> = all
            .iter()
            .enumerate()
            .map(|(i, (n, c))| {
                let mut c = c.clone();
                if c.hostname.is_none() {
                    c.hostname = Some(n.clone());
                }
                (format!("n{i:04}"), c)
            })
            .collect();
        let pairs: Vec<(&str, &machinist_guest::NodeConfig)> =
            keyed.iter().map(|(k, c)| (k.as_str(), c)).collect();
        machinist_guest::validate(&pairs[pairs.len() - 1..])
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let plan = machinist_guest::NetworkPlan::new(&pairs);
        let key = &keyed[keyed.len() - 1].0;
        let planned = plan.node(key).cloned().ok_or_else(|| {
            Error::Internal(format!("machine `{name}` is missing from its network plan"))
        })?;
        let layer = machinist_guest::NodeLayer::render(key, &keyed[keyed.len() - 1].1, &plan)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let spec = machinist_guest::ImageSpec::for_node(&config);
        let img = self
            .image_cache
            .ensure(&spec, machinist_guest::Progress::Lines)
            .map_err(|e| Error::backend(Some(name), "building the image", e))?;
        let m = build_machine(
            &self.ctx,
            name,
            &config,
            &planned,
            &img,
            &layer,
            &self.vlans,
        )?;
        let mut m = Arc::try_unwrap(m)
            .map_err(|_| Error::Internal("a new machine was shared before it was set up".into()))?;
        m.adhoc_config = Some(config);
        Ok(Arc::new(m))
    }
}
