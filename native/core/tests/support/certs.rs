//! Test CA and node certificates generated with rcgen (filled by the TLS work item).
