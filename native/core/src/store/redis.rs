//! Redis backend (through Dynomite or twemproxy too): proxy-safe dialect only.
