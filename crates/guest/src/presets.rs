//! Ready-made pieces of node configuration.

use crate::config::{NodeConfig, ServiceSpec, ServiceType};

/// Run PostgreSQL `major` (e.g. 15) directly as a `Type=notify` unit named `postgresql.service`
/// (overriding Debian's wrapper unit, and masking `postgresql@<major>-main.service`), without the
/// perl `pg_ctlcluster` layer: about a second faster to `pg_isready` under TCG. Durability is
/// unchanged: the cluster's own configuration (fsync on) is used. Adds the `postgresql` package.
pub fn postgresql_direct(cfg: NodeConfig, major: u32) -> NodeConfig {
    let service = ServiceSpec::new(
        "postgresql",
        format!(
            "/usr/lib/postgresql/{major}/bin/postgres -D /var/lib/postgresql/{major}/main -c config_file=/etc/postgresql/{major}/main/postgresql.conf"
        ),
    )
    .description(format!("PostgreSQL {major} (started directly)"))
    .after("network.target")
    .user("postgres")
    .group("postgres")
    .service_type(ServiceType::Notify)
    .service_line("RuntimeDirectory=postgresql")
    .service_line("RuntimeDirectoryPreserve=yes")
    .service_line("ExecReload=/bin/kill -HUP $MAINPID")
    .service_line("KillMode=mixed")
    .service_line("KillSignal=SIGINT")
    .service_line("TimeoutSec=120");
    cfg.package("postgresql")
        .service(service)
        .mask_unit(format!("postgresql@{major}-main.service"))
}
