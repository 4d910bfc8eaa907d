//! A VDE-style virtual Ethernet switch: stream and VDE ports, block, partitions, impairments, counters and pcap.
