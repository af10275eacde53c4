//! Recipient lookup (SPEC 5) over two caches (SPEC 4) in front of the store.
