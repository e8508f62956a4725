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

/// Unicode format characters (category Cf) that change how text looks or reads without showing.
pub(crate) fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0000}'..='\u{E007F}')
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
