//! JID parsing and normalisation (SPEC 5): the split of RFC 7622, lower-casing,
//! the rejected forms, the session-table keys, and a property test that no
//! input string makes parsing panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gd_core::jid::{Jid, JidError, JidRef, Part, MAX_PART_BYTES};
use proptest::prelude::*;

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

#[test]
fn splits_user_domain_resource() {
    let j = jid("alice@example.com/phone");
    assert_eq!(j.user(), Some("alice"));
    assert_eq!(j.domain(), "example.com");
    assert_eq!(j.resource(), Some("phone"));
    assert!(!j.is_bare());

    let d = jid("muc.example.com");
    assert_eq!(
        (d.user(), d.domain(), d.resource()),
        (None, "muc.example.com", None)
    );
    assert!(d.is_bare());

    let dr = jid("example.com/admin");
    assert_eq!(
        (dr.user(), dr.domain(), dr.resource()),
        (None, "example.com", Some("admin"))
    );
}

#[test]
fn resource_starts_at_first_slash_and_may_hold_at_and_slash() {
    // The '@' after the first '/' belongs to the resource (RFC 7622 3.1).
    let j = jid("example.com/a@b/c");
    assert_eq!(j.user(), None);
    assert_eq!(j.domain(), "example.com");
    assert_eq!(j.resource(), Some("a@b/c"));

    let j = jid("bob@example.com/x/y@z");
    assert_eq!(j.user(), Some("bob"));
    assert_eq!(j.resource(), Some("x/y@z"));
}

#[test]
fn lower_cases_user_and_domain_but_not_resource() {
    let j = jid("Alice@Example.COM/PhOnE");
    assert_eq!(j.to_string(), "alice@example.com/PhOnE");
    // Non-ASCII goes through char::to_lowercase.
    let j = jid("ÉLODIE@ÜBER.example/Ä");
    assert_eq!(j.user(), Some("élodie"));
    assert_eq!(j.domain(), "über.example");
    assert_eq!(j.resource(), Some("Ä"));
}

#[test]
fn drops_one_trailing_dot_of_the_domain() {
    assert_eq!(jid("a@example.com.").domain(), "example.com");
    assert_eq!(jid("example.com./r").to_string(), "example.com/r");
    assert_eq!(Jid::parse("a@example.com.."), Err(JidError::EmptyLabel));
    assert_eq!(Jid::parse("."), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse(".example.com"), Err(JidError::EmptyLabel));
}

#[test]
fn rejects_empty_parts() {
    assert_eq!(Jid::parse(""), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("alice@"), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("alice@/r"), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("/r"), Err(JidError::EmptyDomain));
    assert_eq!(Jid::parse("@example.com"), Err(JidError::EmptyUser));
    assert_eq!(
        Jid::parse("alice@example.com/"),
        Err(JidError::EmptyResource)
    );
}

#[test]
fn rejects_forbidden_characters() {
    for c in [
        '"', '&', '\'', ':', '<', '>', ' ', '\t', '\u{0}', '\u{7f}', '\u{a0}',
    ] {
        let s = format!("a{c}b@example.com");
        assert_eq!(
            Jid::parse(&s),
            Err(JidError::ForbiddenChar {
                part: Part::User,
                ch: c
            }),
            "{s:?}"
        );
    }
    // The second '@' lands in the domain.
    assert_eq!(
        Jid::parse("a@b@example.com"),
        Err(JidError::ForbiddenChar {
            part: Part::Domain,
            ch: '@'
        })
    );
    assert_eq!(
        Jid::parse("a@exa mple.com"),
        Err(JidError::ForbiddenChar {
            part: Part::Domain,
            ch: ' '
        })
    );
    assert_eq!(
        Jid::parse("a@example.com/x\ny"),
        Err(JidError::ForbiddenChar {
            part: Part::Resource,
            ch: '\n'
        })
    );
    // Spaces are fine in a resource.
    assert_eq!(jid("a@example.com/my phone").resource(), Some("my phone"));
}

#[test]
fn rejects_parts_over_1023_bytes() {
    let ok = "u".repeat(MAX_PART_BYTES);
    let long = "u".repeat(MAX_PART_BYTES + 1);
    assert!(Jid::parse(&format!("{ok}@example.com/{ok}")).is_ok());
    assert_eq!(
        Jid::parse(&format!("{long}@example.com")),
        Err(JidError::TooLong {
            part: Part::User,
            len: MAX_PART_BYTES + 1
        })
    );
    assert!(matches!(
        Jid::parse(&format!("a@{long}")),
        Err(JidError::TooLong {
            part: Part::Domain,
            ..
        })
    ));
    assert!(matches!(
        Jid::parse(&format!("a@example.com/{long}")),
        Err(JidError::TooLong {
            part: Part::Resource,
            ..
        })
    ));
    // Counted in bytes, not characters: 512 two-byte characters are too many.
    assert!(matches!(
        Jid::parse(&format!("{}@example.com", "é".repeat(512))),
        Err(JidError::TooLong {
            part: Part::User,
            ..
        })
    ));
}

#[test]
fn errors_say_what_to_fix() {
    let msg = Jid::parse("a<b@example.com").unwrap_err().to_string();
    assert!(msg.contains("user") && msg.contains("'<'"), "{msg}");
    let msg = Jid::parse("@example.com").unwrap_err().to_string();
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn new_builds_the_same_as_parse() {
    let built = Jid::new(Some("Alice"), "Example.com.", Some("r/1@x")).unwrap();
    assert_eq!(built, jid("alice@example.com/r/1@x"));
    assert_eq!(
        Jid::new(None, "example.com", None).unwrap(),
        jid("example.com")
    );
    assert_eq!(
        Jid::new(Some("a"), "b/c", None),
        Err(JidError::ForbiddenChar {
            part: Part::Domain,
            ch: '/'
        })
    );
    assert_eq!(
        Jid::new(Some("a@b"), "example.com", None),
        Err(JidError::ForbiddenChar {
            part: Part::User,
            ch: '@'
        })
    );
    assert_eq!(
        Jid::new(Some("a"), "example.com", Some("")),
        Err(JidError::EmptyResource)
    );
}

#[test]
fn session_table_keys_and_bare() {
    let j = jid("Alice@Example.com/Phone");
    assert_eq!(j.to_full_string(), "alice@example.com/Phone");
    assert_eq!(j.to_bare_string(), "alice@example.com");
    assert_eq!(j.as_full_str(), "alice@example.com/Phone");
    assert_eq!(j.as_bare_str(), "alice@example.com");
    let b = j.bare();
    assert!(b.is_bare());
    assert_eq!(b, jid("alice@example.com"));
    assert_eq!(b.bare(), b);
    assert_eq!(jid("example.com/r").to_bare_string(), "example.com");
}

#[test]
fn same_user_ignores_resource_only() {
    let a1 = jid("alice@example.com/one");
    assert!(a1.same_user(&jid("ALICE@example.com/two")));
    assert!(a1.same_user(&jid("alice@example.com")));
    assert!(!a1.same_user(&jid("alice@dc1.example.com/one")));
    assert!(!a1.same_user(&jid("bob@example.com/one")));
    // A user and the bare domain are different entities.
    assert!(!jid("example.com/r").same_user(&a1));
}

proptest! {
    #[test]
    fn parse_never_panics(s in any::<String>()) {
        let _ = Jid::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_jid_like_input(s in "[a-zA-Z0-9@/. \u{0}-\u{1f}éÄİ]{0,40}") {
        let _ = Jid::parse(&s);
    }

    #[test]
    fn display_round_trips(s in any::<String>()) {
        if let Ok(j) = Jid::parse(&s) {
            let again = Jid::parse(&j.to_string()).unwrap();
            prop_assert_eq!(&again, &j);
            prop_assert_eq!(again.user(), j.user());
            prop_assert_eq!(again.domain(), j.domain());
            prop_assert_eq!(again.resource(), j.resource());
        }
    }

    #[test]
    fn display_round_trips_on_valid_parts(
        user in proptest::option::of("[a-zA-Z0-9._-]{1,20}|\\PC{1,8}"),
        domain in "[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,3}\\.?",
        resource in proptest::option::of("\\PC{1,20}"),
    ) {
        let j = match Jid::new(user.as_deref(), &domain, resource.as_deref()) {
            Ok(j) => j,
            // A random non-ASCII user may contain a forbidden character.
            Err(JidError::ForbiddenChar { part: Part::User, .. }) => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        prop_assert_eq!(Jid::parse(&j.to_string()).unwrap(), j.clone());
        prop_assert_eq!(j.resource(), resource.as_deref());
        prop_assert_eq!(j.domain(), domain.trim_end_matches('.').to_ascii_lowercase());
    }

    /// A borrowed canonical JID (the host's lookups) is what parsing the
    /// same text gives, and only text that parses unchanged is taken as
    /// canonical.
    #[test]
    fn canonical_view_agrees_with_parse(s in "[a-zA-Z0-9@/. \u{0}-\u{1f}éÄ\"&:<>]{0,40}") {
        if let Some(v) = JidRef::canonical(&s) {
            let j = Jid::parse(&s).unwrap();
            prop_assert_eq!(j.as_full_str(), s.as_str());
            prop_assert_eq!(v.as_full_str(), j.as_full_str());
            prop_assert_eq!(v.as_bare_str(), j.as_bare_str());
            prop_assert_eq!(v.user(), j.user());
            prop_assert_eq!(v.domain(), j.domain());
        }
    }
}
