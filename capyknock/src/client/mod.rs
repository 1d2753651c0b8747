//! The user's side: client profiles, the `knock` command and the ssh `ProxyCommand` relay.
