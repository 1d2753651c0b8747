//! `capyknock keygen`: creates a user (id, key, TOTP secret) for the server and client configs.
