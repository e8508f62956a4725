//! What a tenant id may be. The id keys per-tenant state (quotas, budgets, lines, series),
//! labels every exported series of the tenant and is stored in every trace, so every entry point
//! (executions, ingested points, read tokens) checks it by the same rule.

/// Longest tenant id (bytes).
pub const MAX_TENANT_BYTES: usize = 256;

/// Checks a tenant id: 1 to [`MAX_TENANT_BYTES`] bytes, no whitespace at either end, no control
/// characters, no invisible formatting characters (zero-width spaces and joiners, byte-order
/// marks, bidirectional overrides), and in Unicode normal form C, so two ids that look the same
/// on a dashboard are the same id. The error says what is wrong.
pub fn check_tenant(tenant: &str) -> Result<(), &'static str> {
    if tenant.trim().is_empty() {
        return Err("must not be empty");
    }
    if tenant.len() > MAX_TENANT_BYTES {
        return Err("is longer than 256 bytes");
    }
    if tenant.trim() != tenant {
        return Err("starts or ends with whitespace");
    }
    if tenant.chars().any(char::is_control) {
        return Err("holds control characters");
    }
    if tenant.chars().any(is_invisible_format) {
        return Err("holds invisible formatting characters (zero-width or bidirectional)");
    }
    // `café` typed as one character or as `e` plus a combining accent looks the same: only
    // the composed form (NFC) is taken, so one visible id is one tenant.
    if !unicode_normalization::is_nfc(tenant) {
        return Err("is not in Unicode normal form C (compose its accents)");
    }
    Ok(())
}

/// Characters that change how text looks or reads without showing themselves: Unicode's
/// format characters (category Cf), its default-ignorable code points (variation selectors,
/// the combining grapheme joiner, Hangul fillers...), line and paragraph separators, and the
/// blank braille pattern. Two ids or values differing only by them look alike; inside a value
/// they split what the PII checks look for (adversary rounds 7 and 8).
pub(crate) fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{06DD}' | '\u{070F}'
        | '\u{0600}'..='\u{0605}'
        | '\u{0890}'..='\u{0891}' | '\u{08E2}'
        | '\u{115F}'..='\u{1160}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{2800}'
        | '\u{3164}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}'
        | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}'
        | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_that_look_alike_or_hide_characters_are_refused() {
        for ok in ["acme", "café", "team-7/eu", &"t".repeat(256)] {
            assert_eq!(check_tenant(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            " ",
            "\u{a0}",
            "acme ",
            " acme",
            "a\0b",
            "a\nb",
            "acme\u{200b}",
            "\u{202e}emca",
            "\u{feff}",
            "\u{200b}",
            &"t".repeat(257),
            // `café` with a combining accent (NFD): looks like the NFC one above.
            "cafe\u{301}",
        ] {
            assert!(check_tenant(bad).is_err(), "{bad:?}");
        }
    }
}
