//! Debian guest images built with mmdebstrap, a tiny initramfs, and the per-node configuration layer.
