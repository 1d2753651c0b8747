//! The daemon: configuration, state directory, control socket, and the wiring of capture ->
//! protocol -> firewall.
