//! QEMU command lines, process supervision, an async QMP client and the accelerator probe.
