//! Multi-machine integration tests in real QEMU virtual machines: Test, Machine, VLan, templates and logging.
