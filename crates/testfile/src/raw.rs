//! The file's shape, as serde reads it (`deny_unknown_fields` everywhere, so a typo is an
//! error that lists the valid keys).

use std::collections::BTreeMap;

use machinist_guest::{
    DefaultGateway, FirewallSpec, FirstBootScript, GroupSpec, Route, ServiceSpec, UserSpec,
};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    pub name: Spanned<String>,
    #[serde(default)]
    pub vars: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub nodes: BTreeMap<Spanned<String>, Spanned<RawNode>>,
    #[serde(default)]
    pub script: Option<Spanned<String>>,
    #[serde(default)]
    pub script_file: Option<Spanned<String>>,
    /// A unified diff applied to the script (a test kept verbatim, with its edits beside it).
    #[serde(default)]
    pub script_patch: Option<Spanned<String>>,
    /// Seconds after which the whole test fails.
    #[serde(default)]
    pub global_timeout: Option<Spanned<f64>>,
}

/// One `[nodes.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    pub services: Vec<Spanned<ServiceSpec>>,
    #[serde(default)]
    pub first_boot: Vec<Spanned<FirstBootScript>>,
    #[serde(default)]
    pub users: Vec<Spanned<UserSpec>>,
    #[serde(default)]
    pub groups: Vec<Spanned<GroupSpec>>,
    #[serde(default)]
    pub firewall: Option<FirewallSpec>,
    #[serde(default)]
    pub vlans: Option<Vec<u8>>,
    #[serde(default)]
    pub user_net: bool,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub cores: Option<u32>,
    #[serde(default)]
    pub masked_units: Vec<String>,
    #[serde(default)]
    pub kernel_args: Vec<String>,
    #[serde(default)]
    pub qemu_args: Vec<String>,
    #[serde(default)]
    pub options: BTreeMap<String, Spanned<toml::Value>>,
    /// Kernel variables; a value is a string or an integer.
    #[serde(default)]
    pub sysctls: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub ip_forwarding: bool,
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub default_gateway: Option<Spanned<DefaultGateway>>,
    #[serde(default)]
    pub kernel_modules: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub logind: bool,
}

/// One `[[nodes.NAME.files]]` entry: exactly one of `contents`, `source`, `template`,
/// `host_program`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub path: String,
    #[serde(default)]
    pub contents: Option<String>,
    #[serde(default)]
    pub source: Option<Spanned<String>>,
    #[serde(default)]
    pub template: Option<Spanned<String>>,
    #[serde(default)]
    pub vars: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub host_program: Option<Spanned<String>>,
    #[serde(default)]
    pub mode: Option<u32>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
}
