//! The per-node layer: the node configuration rendered to a small file tree, delivered as a cpio
//! appended to the initrd (cold boot) or written through the backdoor (running machine).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::NodeConfig;
use crate::error::{FieldError, GuestError};
use crate::network::NetworkPlan;
use crate::unit_name::{full_unit_name, service_stem};
use crate::units;

/// Directory of the layer inside the initramfs.
pub const INITRD_LAYER_DIR: &str = "machinist-layer";
/// Path of the guest-side apply step in the image.
pub const APPLY_LAYER_PATH: &str = "/usr/lib/machinist/apply-layer";

/// One entry of the layer tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LayerEntry {
    /// A regular file.
    File {
        /// Contents.
        contents: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink {
        /// Link target.
        target: String,
    },
}

/// A file or symlink of the layer, with its path relative to the layer directory
/// (`root/etc/hostname`, `owners`, `units`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Relative path.
    pub path: String,
    /// The entry.
    pub entry: LayerEntry,
}

/// The rendered node layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayer {
    node: String,
    entries: BTreeMap<String, LayerEntry>,
}

#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    config: &'a NodeConfig,
    network: Option<&'a crate::network::PlannedNode>,
}

impl NodeLayer {
    /// Render the layer of node `name`. Fails (naming node and field) if `name` is not in `plan`.
    pub fn render(
        name: &str,
        cfg: &NodeConfig,
        plan: &NetworkPlan,
    ) -> Result<NodeLayer, GuestError> {
        let planned = plan.node(name).ok_or_else(|| {
            GuestError::Invalid(vec![FieldError {
                node: name.to_string(),
                field: "name".into(),
                message: "node is not part of the network plan (build the plan from all nodes)"
                    .into(),
            }])
        })?;
        crate::validate::check_rendered_fields(name, cfg)?;
        let mut l = NodeLayer {
            node: name.to_string(),
            entries: BTreeMap::new(),
        };
        let mut owners = String::new();
        let mut start_units: Vec<String> = Vec::new();

        l.text(
            "root/etc/hostname",
            0o644,
            format!("{}\n", planned.hostname),
        );
        l.text("root/etc/hosts", 0o644, plan.hosts_file(name));
        let json = NodeJson {
            name,
            config: cfg,
            network: Some(planned),
        };
        let json = serde_json::to_string_pretty(&json).unwrap_or_default();
        l.text("root/etc/machinist/node.json", 0o644, json + "\n");

        // Network.
        for iface in &planned.interfaces {
            let stem = format!("root/etc/systemd/network/10-machinist-{}", iface.name);
            l.text(
                format!("{stem}.link"),
                0o644,
                units::link_file(&iface.name, &iface.mac),
            );
            l.text(
                format!("{stem}.network"),
                0o644,
                units::vlan_network_file(iface),
            );
        }
        if let Some(u) = &planned.user_interface {
            let stem = format!("root/etc/systemd/network/10-machinist-{}", u.name);
            l.text(
                format!("{stem}.link"),
                0o644,
                units::link_file(&u.name, &u.mac),
            );
            l.text(
                format!("{stem}.network"),
                0o644,
                units::user_network_file(u),
            );
        }

        // Firewall.
        l.text(
            "root/etc/nftables.conf",
            0o755,
            units::nftables(&cfg.firewall),
        );
        if cfg.firewall.enable {
            l.text(
                format!("root/etc/systemd/system/{}", units::FIREWALL_UNIT),
                0o644,
                units::firewall_unit(),
            );
            l.link(
                format!(
                    "root/etc/systemd/system/sysinit.target.wants/{}",
                    units::FIREWALL_UNIT
                ),
                format!("/etc/systemd/system/{}", units::FIREWALL_UNIT),
            );
        }

        // Accounts.
        if !cfg.users.is_empty() || !cfg.groups.is_empty() {
            l.text(
                "root/etc/sysusers.d/machinist.conf",
                0o644,
                units::sysusers(&cfg.users, &cfg.groups),
            );
        }
        l.text(
            "root/etc/tmpfiles.d/machinist.conf",
            0o644,
            units::tmpfiles(&cfg.users),
        );

        // Files.
        for f in &cfg.files {
            let contents = match &f.source {
                Some(host) => std::fs::read(host).map_err(|e| {
                    GuestError::io(
                        format!("node {name}: reading the host file for {}", f.path),
                        host,
                        e,
                    )
                })?,
                None => f.contents.clone().into_bytes(),
            };
            l.bytes(format!("root{}", f.path), f.mode, contents);
            if f.owner != "root" || f.group != "root" {
                let _ = writeln!(owners, "{} {} {}", f.owner, f.group, f.path);
            }
        }

        // Services.
        for s in &cfg.services {
            let unit = s.unit_name();
            l.text(
                format!("root/etc/systemd/system/{unit}"),
                0o644,
                units::service_unit(s),
            );
            if let Some(script) = &s.script {
                l.text(
                    format!(
                        "root{}/{}",
                        units::SERVICE_SCRIPT_DIR,
                        service_stem(&s.name)
                    ),
                    0o755,
                    units::script_file(script),
                );
            }
            for target in &s.wanted_by {
                let target = full_unit_name(target);
                l.link(
                    format!("root/etc/systemd/system/{target}.wants/{unit}"),
                    format!("/etc/systemd/system/{unit}"),
                );
            }
            if !s.wanted_by.is_empty() {
                start_units.push(unit);
            }
        }
        for f in &cfg.first_boot {
            let unit = f.unit_name();
            l.text(
                format!("root/etc/systemd/system/{unit}"),
                0o644,
                units::first_boot_unit(f),
            );
            l.text(
                format!("root{}/{}", units::FIRST_BOOT_DIR, service_stem(&f.name)),
                0o755,
                units::script_file(&f.script),
            );
            l.link(
                format!("root/etc/systemd/system/multi-user.target.wants/{unit}"),
                format!("/etc/systemd/system/{unit}"),
            );
            start_units.push(unit);
        }
        for m in cfg.masked_unit_names() {
            l.link(format!("root/etc/systemd/system/{m}"), "/dev/null");
        }

        l.text("owners", 0o644, owners);
        let mut units_txt = String::new();
        let mut seen = BTreeSet::new();
        for u in start_units {
            if seen.insert(u.clone()) {
                units_txt.push_str(&u);
                units_txt.push('\n');
            }
        }
        l.text("units", 0o644, units_txt);
        Ok(l)
    }

    fn text(&mut self, path: impl Into<String>, mode: u32, contents: impl Into<String>) {
        self.bytes(path, mode, contents.into().into_bytes());
    }

    fn bytes(&mut self, path: impl Into<String>, mode: u32, contents: Vec<u8>) {
        self.entries
            .insert(path.into(), LayerEntry::File { contents, mode });
    }

    fn link(&mut self, path: impl Into<String>, target: impl Into<String>) {
        self.entries.insert(
            path.into(),
            LayerEntry::Symlink {
                target: target.into(),
            },
        );
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// All entries, keyed by path relative to the layer directory.
    pub fn entries(&self) -> &BTreeMap<String, LayerEntry> {
        &self.entries
    }

    /// All entries as a list (for writing them through the backdoor on a running machine).
    pub fn files(&self) -> Vec<LayerFile> {
        self.entries
            .iter()
            .map(|(p, e)| LayerFile {
                path: p.clone(),
                entry: e.clone(),
            })
            .collect()
    }

    /// The layer as a newc cpio under `/machinist-layer/`, to append to the initrd.
    pub fn to_cpio(&self) -> Result<Vec<u8>, GuestError> {
        let err = |e: std::io::Error| GuestError::io("writing the layer cpio of", &self.node, e);
        let mut w = machinist_qemu::cpio::NewcWriter::new(Vec::new());
        w.dir_all(INITRD_LAYER_DIR).map_err(err)?;
        for (path, entry) in &self.entries {
            let full = format!("{INITRD_LAYER_DIR}/{path}");
            if let Some((parent, _)) = full.rsplit_once('/') {
                w.dir_all(parent).map_err(err)?;
            }
            match entry {
                LayerEntry::File { contents, mode } => {
                    w.file(&full, *mode, contents).map_err(err)?
                }
                LayerEntry::Symlink { target } => w.symlink(&full, target).map_err(err)?,
            }
        }
        w.finish().map_err(err)
    }

    /// The layer as a ustar archive (paths relative to the layer directory), the form a running
    /// machine receives it in.
    pub fn to_tar(&self) -> Result<Vec<u8>, GuestError> {
        let mut w = crate::tar::TarWriter::new();
        for (path, entry) in &self.entries {
            let r = match entry {
                LayerEntry::File { contents, mode } => w.file(path, *mode, contents),
                LayerEntry::Symlink { target } => w.symlink(path, target),
            };
            r.map_err(|e| {
                GuestError::Invalid(vec![FieldError {
                    node: self.node.clone(),
                    field: "files".into(),
                    message: e.to_string(),
                }])
            })?;
        }
        Ok(w.finish())
    }

    /// A shell script that unpacks the archive at `tar` (from [`NodeLayer::to_tar`]) into `dir`
    /// and applies it with `apply-layer --live`: the warm start's step, after the archive was
    /// written to the guest.
    /// Both paths are shell-quoted, so any characters (a `'`, spaces) are safe.
    pub fn apply_tar_script(tar: &str, dir: &str) -> String {
        let (tar, dir) = (crate::shell_quote(tar), crate::shell_quote(dir));
        format!(
            "rm -rf -- {dir}\nmkdir -p -- {dir}\ntar -xf {tar} -C {dir}\nrm -f -- {tar}\nsh {APPLY_LAYER_PATH} --live {dir}\n"
        )
    }

    /// A self-contained bash script that writes the layer to `dir` on a running machine (the
    /// archive as base64) and applies it with `apply-layer --live`, for running through a
    /// backdoor command.
    pub fn live_apply_script(&self, dir: &str) -> Result<String, GuestError> {
        let tar = format!("{dir}.tar");
        Ok(format!(
            "set -euo pipefail\nbase64 -d > {} <<'MACHINIST_EOF'\n{}\nMACHINIST_EOF\n{}",
            crate::shell_quote(&tar),
            base64_lines(&self.to_tar()?),
            Self::apply_tar_script(&tar, dir)
        ))
    }

    /// A readable listing of the whole layer (paths, modes, symlinks, text contents), used by the
    /// render snapshot tests and for logs.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (path, entry) in &self.entries {
            match entry {
                LayerEntry::File { contents, mode } => {
                    let _ = writeln!(out, "=== {path} (mode {mode:o})");
                    match std::str::from_utf8(contents) {
                        Ok(text) => {
                            out.push_str(text);
                            if !text.ends_with('\n') && !text.is_empty() {
                                out.push('\n');
                            }
                        }
                        Err(_) => {
                            let _ = writeln!(out, "<{} bytes of binary data>", contents.len());
                        }
                    }
                }
                LayerEntry::Symlink { target } => {
                    let _ = writeln!(out, "=== {path} -> {target}");
                }
            }
        }
        out
    }
}

fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let enc = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(enc.len() + enc.len() / 76 + 1);
    for (i, c) in enc.chars().enumerate() {
        if i > 0 && i % 76 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out
}
