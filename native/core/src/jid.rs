//! JIDs (RFC 7622 addresses): parsing, normalisation (SPEC 5) and the keys
//! they take in the session table.
//!
//! A [`Jid`] keeps its canonical text (`user@domain/resource`) in one
//! `Arc<str>` plus two offsets, so cloning is a reference-count increment and
//! the session-table keys ([`Jid::as_full_str`], [`Jid::as_bare_str`]) are
//! slices of it: the inline routing path looks up the caches without
//! allocating.
//!
//! Normalisation: user and domain are lower-cased, resource is kept as is,
//! one trailing dot of the domain is dropped. Full nodeprep/nameprep
//! (stringprep tables, NFKC) is approximated: ASCII is lower-cased exactly,
//! other characters through `char::to_lowercase`. Two JIDs that differ only
//! in a compatibility form (e.g. full-width letters) therefore stay distinct;
//! the XMPP server in front of us has already applied its own stringprep to
//! the addresses it hands us, so this only matters for hand-made input.

use std::fmt;
use std::sync::Arc;

/// RFC 7622: each part is at most 1023 octets.
pub const MAX_PART_BYTES: usize = 1023;

/// Characters nodeprep forbids in the user part besides whitespace and
/// control characters.
const USER_FORBIDDEN: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];

/// What each byte may be in canonical ASCII text (the fast path of
/// [`Jid::parse`]): one table read per byte instead of a chain of tests.
const USER_OK: u8 = 1;
const DOMAIN_OK: u8 = 2;
const RESOURCE_OK: u8 = 4;
static ASCII_CLASS: [u8; 256] = ascii_classes();

const fn ascii_classes() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut class = 0;
        if c.is_ascii_graphic() && !c.is_ascii_uppercase() {
            let mut forbidden = false;
            let mut k = 0;
            while k < USER_FORBIDDEN.len() {
                forbidden |= USER_FORBIDDEN[k] as u32 == c as u32;
                k += 1;
            }
            if !forbidden {
                class |= USER_OK;
            }
            if c != b'@' {
                class |= DOMAIN_OK;
            }
        }
        if c >= b' ' && c < 0x7f {
            class |= RESOURCE_OK;
        }
        table[i] = class;
        i += 1;
    }
    table
}

/// Which part of a JID an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    User,
    Domain,
    Resource,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::User => "user (localpart)",
            Part::Domain => "domain",
            Part::Resource => "resource",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    #[error(
        "invalid JID: the domain is empty (expected user@domain/resource with a non-empty domain)"
    )]
    EmptyDomain,
    #[error("invalid JID: the user part before '@' is empty (drop the '@' for a domain-only JID)")]
    EmptyUser,
    #[error("invalid JID: the resource after '/' is empty (drop the '/' for a bare JID)")]
    EmptyResource,
    #[error("invalid JID: the {part} is {len} bytes long, at most {MAX_PART_BYTES} are allowed")]
    TooLong { part: Part, len: usize },
    #[error("invalid JID: the {part} contains the forbidden character {ch:?}")]
    ForbiddenChar { part: Part, ch: char },
    #[error("invalid JID: the domain has an empty label (leading dot or \"..\")")]
    EmptyLabel,
}

/// A JID in canonical form, borrowed: what the caches are asked with, made
/// from a [`Jid`] or straight from text already canonical (a lookup from
/// the host), without an allocation.
#[derive(Clone, Copy, Debug)]
pub struct JidRef<'a> {
    text: &'a str,
    domain_start: usize,
    domain_end: usize,
}

impl<'a> JidRef<'a> {
    /// `s` when it is canonical ASCII (one pass over the bytes). `None`
    /// means "not sure", never "invalid": [`Jid::parse`] decides then.
    pub fn canonical(s: &'a str) -> Option<JidRef<'a>> {
        let b = s.as_bytes();
        let end = b.iter().position(|&c| c == b'/').unwrap_or(b.len());
        let at = b[..end].iter().position(|&c| c == b'@');
        let domain_start = at.map_or(0, |i| i + 1);
        let user = &b[..at.unwrap_or(0)];
        let domain = &b[domain_start..end];
        let resource = b.get(end + 1..);
        let all =
            |part: &[u8], class: u8| part.iter().all(|&c| ASCII_CLASS[c as usize] & class != 0);
        let user_ok = at.is_none()
            || (!user.is_empty() && user.len() <= MAX_PART_BYTES && all(user, USER_OK));
        let domain_ok = !domain.is_empty()
            && domain.len() <= MAX_PART_BYTES
            && domain.first() != Some(&b'.')
            && domain.last() != Some(&b'.')
            && all(domain, DOMAIN_OK)
            && !domain.windows(2).any(|w| w == b"..");
        let resource_ok = resource
            .is_none_or(|r| !r.is_empty() && r.len() <= MAX_PART_BYTES && all(r, RESOURCE_OK));
        (user_ok && domain_ok && resource_ok).then_some(JidRef {
            text: s,
            domain_start,
            domain_end: end,
        })
    }

    pub fn user(&self) -> Option<&'a str> {
        match self.domain_start {
            0 => None,
            start => self.text.get(..start - 1),
        }
    }

    pub fn domain(&self) -> &'a str {
        self.text
            .get(self.domain_start..self.domain_end)
            .unwrap_or_default()
    }

    pub fn as_full_str(&self) -> &'a str {
        self.text
    }

    pub fn as_bare_str(&self) -> &'a str {
        self.text.get(..self.domain_end).unwrap_or_default()
    }
}

/// A normalised XMPP address. Equality and hashing are on the canonical form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    /// Canonical text: `[user "@"] domain ["/" resource]`.
    text: Arc<str>,
    /// Where the domain starts: 0 when there is no user (users are never
    /// empty, so a non-zero start means "has a user"). `u32` rather than
    /// `usize` (parts are at most [`MAX_PART_BYTES`]): a stanza carries two
    /// JIDs and is moved by value along the routing path.
    domain_start: u32,
    /// Where the domain ends: `text.len()` when there is no resource.
    domain_end: u32,
}

impl Jid {
    /// A JID of checked canonical text (every part at most
    /// [`MAX_PART_BYTES`], so the positions fit a `u32`).
    fn of_parts(text: Arc<str>, domain_start: usize, domain_end: usize) -> Jid {
        debug_assert!(text.len() <= 3 * MAX_PART_BYTES + 2);
        Jid {
            text,
            domain_start: domain_start as u32,
            domain_end: domain_end as u32,
        }
    }

    /// Parses and normalises a JID. Never panics, whatever the input.
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        if let Some(jid) = Jid::parse_canonical_ascii(s) {
            return Ok(jid);
        }
        Jid::parse_general(s)
    }

    /// The fast path of [`Jid::parse`]: ASCII text that is already in
    /// canonical form (what another DC or the XMPP server sends) becomes a
    /// JID with one allocation and one pass over the bytes. `None` means
    /// "not sure", never "invalid": the general path then decides.
    fn parse_canonical_ascii(s: &str) -> Option<Jid> {
        JidRef::canonical(s).map(|r| Jid::of_parts(Arc::from(s), r.domain_start, r.domain_end))
    }

    /// This JID, borrowed.
    pub fn view(&self) -> JidRef<'_> {
        JidRef {
            text: &self.text,
            domain_start: self.domain_start as usize,
            domain_end: self.domain_end as usize,
        }
    }

    fn parse_general(s: &str) -> Result<Jid, JidError> {
        // RFC 7622 3.1: the resource starts at the first '/', and only then
        // is the first '@' looked for, so resources may contain '@'.
        let (rest, resource) = match s.split_once('/') {
            Some((rest, res)) => (rest, Some(res)),
            None => (s, None),
        };
        let (user, domain) = match rest.split_once('@') {
            Some((user, domain)) => (Some(user), domain),
            None => (None, rest),
        };
        Jid::new(user, domain, resource)
    }

    /// Builds a JID from its parts, with the same normalisation and checks
    /// as [`Jid::parse`]. The resource may contain '/' and '@'.
    pub fn new(user: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        let user = user.map(normalise_user).transpose()?;
        let domain = normalise_domain(domain)?;
        if let Some(res) = resource {
            check_resource(res)?;
        }
        let mut text = String::with_capacity(
            user.as_ref().map_or(0, |u| u.len() + 1)
                + domain.len()
                + resource.map_or(0, |r| r.len() + 1),
        );
        if let Some(u) = &user {
            text.push_str(u);
            text.push('@');
        }
        let domain_start = text.len();
        text.push_str(&domain);
        let domain_end = text.len();
        if let Some(r) = resource {
            text.push('/');
            text.push_str(r);
        }
        Ok(Jid::of_parts(Arc::from(text), domain_start, domain_end))
    }

    pub fn user(&self) -> Option<&str> {
        self.view().user()
    }

    pub fn domain(&self) -> &str {
        self.view().domain()
    }

    pub fn resource(&self) -> Option<&str> {
        self.text.get(self.domain_end as usize + 1..)
    }

    pub fn is_bare(&self) -> bool {
        self.domain_end as usize == self.text.len()
    }

    /// The same address without its resource.
    pub fn bare(&self) -> Jid {
        if self.is_bare() {
            return self.clone();
        }
        Jid {
            text: Arc::from(self.as_bare_str()),
            domain_start: self.domain_start,
            domain_end: self.domain_end,
        }
    }

    /// The canonical full form, the session-table key of a session.
    pub fn as_full_str(&self) -> &str {
        &self.text
    }

    /// The canonical bare form (`user@domain`), the session-table key of a
    /// user.
    pub fn as_bare_str(&self) -> &str {
        self.view().as_bare_str()
    }

    pub fn to_full_string(&self) -> String {
        self.as_full_str().to_owned()
    }

    pub fn to_bare_string(&self) -> String {
        self.as_bare_str().to_owned()
    }

    /// Same user and domain (resources may differ): another session of the
    /// same account.
    pub fn same_user(&self, other: &Jid) -> bool {
        self.as_bare_str() == other.as_bare_str()
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jid({:?})", &*self.text)
    }
}

impl std::str::FromStr for Jid {
    type Err = JidError;

    fn from_str(s: &str) -> Result<Jid, JidError> {
        Jid::parse(s)
    }
}

fn lowercase(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.chars().flat_map(char::to_lowercase).collect()
    }
}

fn check_len(part: Part, s: &str) -> Result<(), JidError> {
    if s.len() > MAX_PART_BYTES {
        return Err(JidError::TooLong { part, len: s.len() });
    }
    Ok(())
}

fn normalise_user(user: &str) -> Result<String, JidError> {
    if user.is_empty() {
        return Err(JidError::EmptyUser);
    }
    // Checked before lower-casing too, so a huge input is refused without
    // copying it first.
    check_len(Part::User, user)?;
    let user = lowercase(user);
    check_len(Part::User, &user)?;
    let bad = |c: char| c.is_whitespace() || c.is_control() || USER_FORBIDDEN.contains(&c);
    match user.chars().find(|&c| bad(c)) {
        Some(ch) => Err(JidError::ForbiddenChar {
            part: Part::User,
            ch,
        }),
        None => Ok(user),
    }
}

fn normalise_domain(domain: &str) -> Result<String, JidError> {
    check_len(Part::Domain, domain)?;
    // A fully qualified name ("example.com.") is the same domain.
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err(JidError::EmptyDomain);
    }
    let domain = lowercase(domain);
    check_len(Part::Domain, &domain)?;
    let bad = |c: char| c.is_whitespace() || c.is_control() || c == '@' || c == '/';
    if let Some(ch) = domain.chars().find(|&c| bad(c)) {
        return Err(JidError::ForbiddenChar {
            part: Part::Domain,
            ch,
        });
    }
    // Also keeps normalisation idempotent: "a.." would otherwise become
    // "a." and then "a" on the next parse.
    if domain.split('.').any(str::is_empty) {
        return Err(JidError::EmptyLabel);
    }
    Ok(domain)
}

fn check_resource(resource: &str) -> Result<(), JidError> {
    if resource.is_empty() {
        return Err(JidError::EmptyResource);
    }
    check_len(Part::Resource, resource)?;
    match resource.chars().find(|c| c.is_control()) {
        Some(ch) => Err(JidError::ForbiddenChar {
            part: Part::Resource,
            ch,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whenever the fast path answers, it answers what the general path
        /// does, on input made to hit the edge cases of both.
        #[test]
        fn fast_path_agrees_with_the_general_path(
            s in "[a-cA-C0-9@/. \u{0}\u{7f}\"&'<>:éİ]{0,24}"
        ) {
            if let Some(fast) = Jid::parse_canonical_ascii(&s) {
                let general = Jid::parse_general(&s);
                // Equality covers the text and both offsets.
                prop_assert_eq!(Ok(fast), general);
            }
        }
    }

    #[test]
    fn canonical_input_takes_the_fast_path_and_the_rest_does_not() {
        for s in ["a@b.c/r", "b.c", "a@b", "b/r x", "a@b/r@x/y"] {
            assert!(Jid::parse_canonical_ascii(s).is_some(), "{s}");
        }
        for s in [
            "A@b",
            "a@B",
            "a@b.",
            "a@.b",
            "a@b..c",
            "a@b/",
            "@b",
            "a@b/\u{1}",
            "é@b",
            "a b@c",
        ] {
            assert!(Jid::parse_canonical_ascii(s).is_none(), "{s}");
        }
    }
}
