//! Starts real redis-server and nutcracker processes on free ports (filled by the store work item).
