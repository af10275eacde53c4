//! JIDs (RFC 7622 addresses): parsing, normalisation (SPEC 5) and the keys
//! they take in the session table.
