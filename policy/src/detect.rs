//! Sensitive values inside free text: card numbers and e-mail addresses.
//!
//! A dataset contract classifies whole fields; a card number or an e-mail address typed into
//! a comment classified `public` would pass unprotected. The ingest edge scans such text with
//! [`scan`] and refuses the record, or tokenizes what was found (a card's digits through
//! [`card_digits`]).
//!
//! The scan reads the text as bytes: both patterns are ASCII and end at a byte that is not
//! part of them, so every range it reports lies on `char` boundaries whatever surrounds it.
//! Its work is linear in the length of the text.

use crate::pan::luhn_valid;

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detector {
    CardNumber,
    Email,
}

impl Detector {
    /// A stable name (`card_number`, `email`), for refusals and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardNumber => "card_number",
            Self::Email => "email",
        }
    }
}

/// One finding: byte range in the text (start..end) and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub start: usize,
    pub end: usize,
}

/// Every card number and e-mail address in `text`, in order of start, non-overlapping.
///
/// Where a card number and an e-mail address overlap (digits in a local part), the one that
/// starts first wins, and at the same start the longer: what is reported covers both.
pub fn scan(text: &str) -> Vec<Finding> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    scan_cards(b, &mut found);
    scan_emails(b, &mut found);
    found.sort_unstable_by(|x, y| x.start.cmp(&y.start).then(y.end.cmp(&x.end)));
    let mut end = 0;
    found.retain(|f| {
        let keep = f.start >= end;
        if keep {
            end = f.end;
        }
        keep
    });
    found
}

/// Whether `text` holds a card number (an e-mail address found by [`scan`] may hide one in
/// its local part: the stricter of the two actions applies to it).
pub fn has_card(text: &str) -> bool {
    let mut found = Vec::new();
    scan_cards(text.as_bytes(), &mut found);
    !found.is_empty()
}

/// The digits of a card-number finding (separators dropped), e.g. for tokenizing it.
///
/// Empty if the finding's range does not lie in `text`.
pub fn card_digits(text: &str, f: &Finding) -> String {
    text.get(f.start..f.end)
        .unwrap_or_default()
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(char::from)
        .collect()
}

/// Whether the digit string (13–19 ASCII digits) starts with a card network's issuer prefix
/// and has a length that network issues.
///
/// The lengths follow the networks' published ranges, rounded towards finding more: Visa 13,
/// 16 or 19; Mastercard, RuPay and Troy 16; American Express 15; Diners Club 14–19 (its older
/// ranges included); Maestro 13–19 (it issues 12, which the scan never looks for); the others
/// 16–19. Anything else, including a string that is not 13–19 digits, is `false`.
pub fn has_issuer_prefix(digits: &str) -> bool {
    issuer_prefix(digits.as_bytes())
}

/// Lengths a card network issues, as a bit set (bit `n` for `n` digits).
const fn lengths(min: u32, max: u32) -> u32 {
    (u32::MAX >> (31 - max)) & !((1 << min) - 1)
}

const L15: u32 = 1 << 15;
const L16: u32 = 1 << 16;
const VISA: u32 = (1 << 13) | (1 << 16) | (1 << 19);
const L13_19: u32 = lengths(13, 19);
const L14_19: u32 = lengths(14, 19);
const L16_19: u32 = lengths(16, 19);

/// An issuer identification number range: the first `width` digits lie in `lo..=hi`.
struct Iin {
    lo: u32,
    hi: u32,
    width: usize,
    lengths: u32,
}

const fn iin(lo: u32, hi: u32, width: usize, lengths: u32) -> Iin {
    Iin {
        lo,
        hi,
        width,
        lengths,
    }
}

/// The networks' ranges (ISO/IEC 7812 issuer identification numbers). Ranges of different
/// networks overlap (65 is Discover and RuPay); any match counts.
const IINS: &[Iin] = &[
    // Visa
    iin(4, 4, 1, VISA),
    // Mastercard
    iin(51, 55, 2, L16),
    iin(2221, 2720, 4, L16),
    // American Express
    iin(34, 34, 2, L15),
    iin(37, 37, 2, L15),
    // Discover
    iin(6011, 6011, 4, L16_19),
    iin(644, 649, 3, L16_19),
    iin(65, 65, 2, L16_19),
    iin(622_126, 622_925, 6, L16_19),
    // Diners Club
    iin(300, 305, 3, L14_19),
    iin(36, 36, 2, L14_19),
    iin(38, 39, 2, L14_19),
    // JCB
    iin(3528, 3589, 4, L16_19),
    // UnionPay
    iin(62, 62, 2, L16_19),
    iin(81, 81, 2, L16_19),
    // Maestro
    iin(50, 50, 2, L13_19),
    iin(56, 58, 2, L13_19),
    iin(63, 63, 2, L13_19),
    iin(67, 67, 2, L13_19),
    iin(6759, 6759, 4, L13_19),
    // Mir
    iin(2200, 2204, 4, L16_19),
    // RuPay
    iin(60, 60, 2, L16),
    iin(65, 65, 2, L16),
    iin(81, 82, 2, L16),
    iin(508, 508, 3, L16),
    // Troy
    iin(9792, 9792, 4, L16),
];

fn issuer_prefix(digits: &[u8]) -> bool {
    let n = digits.len();
    (13..=19).contains(&n)
        && digits.iter().all(u8::is_ascii_digit)
        && issued_lengths(digits) & (1 << n) != 0
}

/// The lengths (bit set) of the card numbers networks issue under the first six of `digits`
/// (ASCII digits): 0 if none uses the prefix.
fn issued_lengths(digits: &[u8]) -> u32 {
    // prefix[w]: the first w digits as a number.
    let mut prefix = [0u32; 7];
    for (w, d) in digits.iter().take(6).enumerate() {
        prefix[w + 1] = prefix[w] * 10 + u32::from(d - b'0');
    }
    IINS.iter()
        .filter(|r| (r.lo..=r.hi).contains(&prefix[r.width]))
        .fold(0, |all, r| all | r.lengths)
}

/// Card numbers: runs of digit groups joined by single spaces or dashes, matched on whole
/// groups, so a match never starts or ends inside a longer digit run.
fn scan_cards(b: &[u8], out: &mut Vec<Finding>) {
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // `i` starts a group: the byte before it, if any, is not a digit.
        if let Some(end) = card_at(b, i) {
            out.push(Finding {
                detector: Detector::CardNumber,
                start: i,
                end,
            });
            i = end;
        } else {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
}

/// The end of the longest card number made of whole groups starting at the group at
/// `start`. At most 19 digits are read (what a card number can hold), fewer when the first
/// six digits are no issuer's or no longer number of theirs is possible, so the work per
/// group is bounded however the text goes on.
fn card_at(b: &[u8], start: usize) -> Option<usize> {
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut issued = None;
    let mut best = None;
    let mut j = start;
    loop {
        while j < b.len() && b[j].is_ascii_digit() {
            if n == digits.len() {
                // This group would take the span past 19 digits.
                return best;
            }
            digits[n] = b[j];
            n += 1;
            j += 1;
        }
        if n >= 6 {
            let lengths = *issued.get_or_insert_with(|| issued_lengths(&digits));
            // The prefix first: it is cheaper than Luhn and rejects most digit strings.
            if lengths & (1 << n) != 0 && luhn_valid(&digits[..n]) {
                best = Some(j);
            }
            if lengths >> (n + 1) == 0 {
                return best;
            }
        }
        let joined = j + 1 < b.len() && matches!(b[j], b' ' | b'-') && b[j + 1].is_ascii_digit();
        if !joined {
            return best;
        }
        j += 1;
    }
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_label(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// E-mail addresses, found from their `@`.
fn scan_emails(b: &[u8], out: &mut Vec<Finding>) {
    // Where the last address ended: the next one's local part may not reach back into it.
    let mut floor = 0;
    let mut i = 0;
    while let Some(k) = b[i..].iter().position(|&c| c == b'@') {
        let at = i + k;
        if let Some((start, end)) = email_at(b, at, floor) {
            out.push(Finding {
                detector: Detector::Email,
                start,
                end,
            });
            floor = end;
            i = end;
        } else {
            i = at + 1;
        }
    }
}

/// The address around the `@` at `at`: the whole run of local-part characters before it
/// (leading dots taken as punctuation), and the longest run of labels after it that ends in
/// a top-level domain. Neither run contains `@`, so the scans of all `@`s together read each
/// byte a bounded number of times.
fn email_at(b: &[u8], at: usize, floor: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > 0 && is_local(b[start - 1]) {
        start -= 1;
        if at - start > 64 {
            return None;
        }
    }
    if start < floor {
        return None;
    }
    while start < at && b[start] == b'.' {
        start += 1;
    }
    if start == at || b[at - 1] == b'.' {
        return None;
    }
    let mut best = None;
    let mut labels = 0;
    let mut j = at + 1;
    loop {
        let label = j;
        while j < b.len() && is_label(b[j]) {
            j += 1;
        }
        if j == label || b[label] == b'-' || b[j - 1] == b'-' || j - start > 254 {
            return best.map(|end| (start, end));
        }
        labels += 1;
        if labels >= 2 && j - label >= 2 && b[label..j].iter().all(u8::is_ascii_alphabetic) {
            best = Some(j);
        }
        if !(j + 1 < b.len() && b[j] == b'.' && is_label(b[j + 1])) {
            return best.map(|end| (start, end));
        }
        j += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pan::with_check_digit;

    /// The text of each finding, with its detector.
    fn found(text: &str) -> Vec<(Detector, &str)> {
        scan(text)
            .iter()
            .map(|f| (f.detector, &text[f.start..f.end]))
            .collect()
    }

    fn cards(text: &str) -> Vec<&str> {
        found(text)
            .into_iter()
            .filter(|(d, _)| *d == Detector::CardNumber)
            .map(|(_, s)| s)
            .collect()
    }

    fn emails(text: &str) -> Vec<&str> {
        found(text)
            .into_iter()
            .filter(|(d, _)| *d == Detector::Email)
            .map(|(_, s)| s)
            .collect()
    }

    /// `digits` in groups of the given sizes, joined by `sep`.
    fn grouped(digits: &str, sizes: &[usize], sep: &str) -> String {
        let mut parts = Vec::new();
        let mut at = 0;
        for s in sizes {
            parts.push(&digits[at..at + s]);
            at += s;
        }
        assert_eq!(at, digits.len());
        parts.join(sep)
    }

    /// Test numbers of each network, with the grouping printed on their cards.
    fn test_cards() -> Vec<(&'static str, String, Vec<usize>)> {
        vec![
            ("visa", "4111111111111111".into(), vec![4, 4, 4, 4]),
            ("visa 13", "4222222222222".into(), vec![4, 3, 3, 3]),
            ("mastercard", "5555555555554444".into(), vec![4, 4, 4, 4]),
            (
                "mastercard 2",
                with_check_digit("222300312200322"),
                vec![4, 4, 4, 4],
            ),
            ("amex", "378282246310005".into(), vec![4, 6, 5]),
            ("discover", "6011111111111117".into(), vec![4, 4, 4, 4]),
            (
                "discover 644",
                with_check_digit("644000000000000"),
                vec![4, 4, 4, 4],
            ),
            ("jcb", "3530111333300000".into(), vec![4, 4, 4, 4]),
            ("diners", "30569309025904".into(), vec![4, 6, 4]),
            ("diners 36", "36227206271667".into(), vec![4, 6, 4]),
            (
                "unionpay",
                with_check_digit("620000000000000"),
                vec![4, 4, 4, 4],
            ),
            (
                "unionpay 19",
                with_check_digit("621234567890123456"),
                vec![6, 13],
            ),
            ("maestro", with_check_digit("675900000000"), vec![4, 4, 5]),
            ("mir", with_check_digit("220012345678901"), vec![4, 4, 4, 4]),
            (
                "rupay",
                with_check_digit("508123456789012"),
                vec![4, 4, 4, 4],
            ),
            (
                "troy",
                with_check_digit("979212345678901"),
                vec![4, 4, 4, 4],
            ),
        ]
    }

    #[test]
    fn test_cards_are_found_in_every_form() {
        for (name, digits, sizes) in test_cards() {
            assert!(has_issuer_prefix(&digits), "{name}");
            let spaced = grouped(&digits, &sizes, " ");
            let dashed = grouped(&digits, &sizes, "-");
            for form in [digits.as_str(), &spaced, &dashed] {
                assert_eq!(cards(form), [form], "{name} bare: {form}");
                let texts = [
                    format!("card {form} please"),
                    format!("{form} is mine"),
                    format!("mine is {form}"),
                    format!("({form})."),
                    format!("Zahlung für {form} ✓"),
                    format!("支付{form}完成"),
                ];
                for text in &texts {
                    assert_eq!(cards(text), [form], "{name}: {text}");
                }
                let f = &scan(&texts[4])[0];
                assert_eq!(card_digits(&texts[4], f), digits, "{name}");
            }
        }
    }

    #[test]
    fn the_example_from_the_contract() {
        let text = "Zahlung für 4111 1111 1111 1111 ✓";
        assert_eq!(
            scan(text),
            [Finding {
                detector: Detector::CardNumber,
                start: 13,
                end: 32,
            }]
        );
        assert_eq!(&text[13..32], "4111 1111 1111 1111");
        assert_eq!(card_digits(text, &scan(text)[0]), "4111111111111111");
        assert_eq!(Detector::CardNumber.as_str(), "card_number");
        assert_eq!(Detector::Email.as_str(), "email");
    }

    #[test]
    fn what_is_not_a_card_number() {
        let twelve = with_check_digit("41111111111");
        let twenty = with_check_digit("4111111111111111111");
        for text in [
            "4111 1111 1111 1112",              // Luhn
            "4111-1111-1111-1112",              // Luhn
            twelve.as_str(),                    // too short
            twenty.as_str(),                    // too long, one run
            "1234 5678 9012 3452",              // Luhn-valid, no issuer
            "0000 0000 0000 0000",              // Luhn-valid, no issuer
            "+1 415 555 2671",                  // phone
            "+44 20 7946 0958, +49 30 1234567", // phones
            "2026-11-24",                       // date
            "2026-11-24 2026-11-25",            // dates
            "4111.1111.1111.1111",              // dots are not separators
            "4111/1111/1111/1111",              // nor slashes
            "4111  1111  1111  1111",           // nor double spaces
            "4111--1111--1111--1111",           // nor double dashes
        ] {
            assert!(cards(text).is_empty(), "{text}");
        }
        assert!(!has_issuer_prefix("1234567890123452"));
        assert!(crate::pan::luhn_valid(b"1234567890123452"));
        // A trailing group that would make the span invalid is left out, not the card.
        assert_eq!(cards("378282246310005 0"), ["378282246310005"]);
        assert_eq!(cards("4111 1111 1111 1111-"), ["4111 1111 1111 1111"]);
    }

    #[test]
    fn digits_glued_to_more_digits_are_not_found() {
        for text in [
            "124111111111111111",   // 18 digits, no issuer for "12"
            "94111111111111111",    // 17 digits, "94" no issuer
            "411111111111111100",   // 18 digits: Visa has no 18-digit numbers
            "x124111111111111111y", // same, between letters
        ] {
            assert!(
                !has_issuer_prefix(text.trim_matches(char::is_alphabetic)),
                "{text} as a whole"
            );
            assert!(cards(text).is_empty(), "{text}");
        }
        // A group glued to the card is part of its run: the span can only take it whole.
        assert!(cards("4111 1111 1111 11119").is_empty());
        assert!(cards("94111 1111 1111 1111").is_empty());
    }

    #[test]
    fn separated_groups_before_a_card_are_not_taken() {
        assert_eq!(
            cards("ref 123 4111 1111 1111 1111"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            cards("ref 123-4111-1111-1111-1111"),
            ["4111-1111-1111-1111"]
        );
        assert_eq!(
            cards("order 2026-11-24 4111 1111 1111 1111"),
            ["4111 1111 1111 1111"]
        );
    }

    #[test]
    fn two_cards_in_one_text_are_both_found() {
        let text = "4111 1111 1111 1111 and 5555-5555-5555-4444";
        assert_eq!(cards(text), ["4111 1111 1111 1111", "5555-5555-5555-4444"]);
        let text = "4111111111111111 5555555555554444";
        assert_eq!(cards(text), ["4111111111111111", "5555555555554444"]);
        let text = "3782 822463 10005 4111 1111 1111 1111";
        assert_eq!(cards(text), ["3782 822463 10005", "4111 1111 1111 1111"]);
        let found = scan(text);
        assert!(found.windows(2).all(|w| w[0].end <= w[1].start));
        assert_eq!(card_digits(text, &found[0]), "378282246310005");
        assert_eq!(card_digits(text, &found[1]), "4111111111111111");
    }

    #[test]
    fn issuer_prefixes_and_lengths() {
        let pad = |prefix: &str, len: usize| format!("{prefix}{}", "0".repeat(len - prefix.len()));
        for (prefix, len) in [
            ("4", 13),
            ("4", 16),
            ("4", 19),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("2720", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 19),
            ("644", 16),
            ("649", 16),
            ("65", 16),
            ("622126", 16),
            ("622925", 19),
            ("300", 14),
            ("305", 14),
            ("36", 14),
            ("38", 14),
            ("39", 16),
            ("3528", 16),
            ("3589", 19),
            ("62", 19),
            ("81", 16),
            ("50", 13),
            ("56", 13),
            ("58", 19),
            ("63", 13),
            ("67", 13),
            ("6759", 13),
            ("2200", 16),
            ("2204", 19),
            ("60", 16),
            ("82", 16),
            ("508", 16),
            ("9792", 16),
        ] {
            assert!(has_issuer_prefix(&pad(prefix, len)), "{prefix} {len}");
        }
        for (prefix, len) in [
            ("4", 17),
            ("51", 15),
            ("2220", 16),
            ("2721", 16),
            ("34", 16),
            ("306", 14),
            ("3527", 16),
            ("3590", 16),
            ("2205", 16),
            ("9791", 16),
            ("1", 16),
            ("7", 16),
            ("82", 19),
            ("4", 12),
            ("4", 20),
        ] {
            assert!(!has_issuer_prefix(&pad(prefix, len)), "{prefix} {len}");
        }
        assert!(!has_issuer_prefix("4111 1111 1111 1111"));
        assert!(!has_issuer_prefix("411111111111111x"));
        assert!(!has_issuer_prefix(""));
    }

    #[test]
    fn email_addresses() {
        assert_eq!(emails("ann@example.com"), ["ann@example.com"]);
        assert_eq!(emails("mail ann@example.com now"), ["ann@example.com"]);
        assert_eq!(
            emails("<ann.b+x@mail.example.co.uk>"),
            ["ann.b+x@mail.example.co.uk"]
        );
        assert_eq!(emails("(ann@example.com)."), ["ann@example.com"]);
        assert_eq!(emails("...ann@example.com..."), ["ann@example.com"]);
        assert_eq!(emails("an_n-1%x@ex-ample.io"), ["an_n-1%x@ex-ample.io"]);
        assert_eq!(emails("Grüße an ann@example.de ✓"), ["ann@example.de"]);
        assert_eq!(
            emails("ann@example.com, bob@example.org"),
            ["ann@example.com", "bob@example.org"]
        );
        for text in [
            "a@b",
            "@example.com",
            "ann@",
            "ann@localhost",
            "1.2@3.4",
            "ann@192.168.0.1",
            "ann.@example.com",
            "ann@-example.com",
            "ann@example.c",
            "ann@example.c0m",
            "ann@@example.com",
            "@",
            "",
        ] {
            assert!(emails(text).is_empty(), "{text}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(emails(&long_local).is_empty());
        let local64 = format!("{}@example.com", "a".repeat(64));
        assert_eq!(emails(&local64), [local64.as_str()]);
        let at_limit = format!("a@{}.com", "b".repeat(248));
        assert_eq!(at_limit.len(), 254);
        assert_eq!(emails(&at_limit), [at_limit.as_str()]);
        let too_long = format!("a@{}.com", "b".repeat(249));
        assert!(emails(&too_long).is_empty());
    }

    #[test]
    fn cards_inside_addresses_are_covered_once() {
        let text = "4111111111111111@example.com";
        assert_eq!(found(text), [(Detector::Email, text)]);
        let text = "pay 4111 1111 1111 1111 from ann@example.com";
        assert_eq!(
            found(text),
            [
                (Detector::CardNumber, "4111 1111 1111 1111"),
                (Detector::Email, "ann@example.com"),
            ]
        );
    }

    /// Scans `text` and checks what every scan promises: ordered, non-overlapping ranges on
    /// `char` boundaries.
    fn scan_checked(text: &str) -> usize {
        let found = scan(text);
        assert!(found.windows(2).all(|w| w[0].end <= w[1].start));
        assert!(found
            .iter()
            .all(|f| f.start < f.end && text.get(f.start..f.end).is_some()));
        found.len()
    }

    #[test]
    fn a_mebibyte_scans() {
        const MIB: usize = 1 << 20;
        // Pseudo-random digits and spaces: many chains, many starts within reach of 19 digits.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let random: String = (0..MIB)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(4) {
                    ' '
                } else {
                    char::from(b'0' + (x % 10) as u8)
                }
            })
            .collect();
        scan_checked(&random);
        // The most groups per digit, and one endless group.
        scan_checked(&"1 ".repeat(MIB / 2));
        scan_checked(&"1-".repeat(MIB / 2));
        // Every start an issuer's, with every length up to 19 digits in reach.
        scan_checked(&"4 ".repeat(MIB / 2));
        scan_checked(&"3-6-".repeat(MIB / 4));
        assert_eq!(scan_checked(&"4".repeat(MIB)), 0);
        // Cards back to back, and cards in multi-byte text.
        let cards = "4111 1111 1111 1111 ".repeat(MIB / 20);
        assert_eq!(scan_checked(&cards), MIB / 20);
        scan_checked(&"für 4111-1111-1111-1111 ✓ ".repeat(MIB / 30));
        // The most `@`s, and local parts and domains as long as they go.
        assert_eq!(scan_checked(&"a@".repeat(MIB / 2)), 0);
        let long = format!("{}@{}", "a".repeat(MIB / 2), "b.".repeat(MIB / 4));
        assert_eq!(scan_checked(&long), 0);
        assert_eq!(scan_checked(&"a.b@c.de ".repeat(MIB / 9)), MIB / 9);
    }
}
