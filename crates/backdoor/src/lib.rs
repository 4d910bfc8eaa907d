//! The guest root-shell protocol: the guest unit and script, and the host client with one round trip per command.
