//! Text helpers every service shares.

/// A `LIKE` pattern matching `query` as a substring: `%`, `_` and `\` escaped, the case left
/// as it is. Callers compare it as `lower(column) like lower($pattern)`, so Postgres lowercases
/// both sides the same way (Rust and Postgres disagree on characters like `Σ` and `İ`).
pub fn like_substring(query: &str) -> String {
    let mut pattern = String::with_capacity(query.len() + 2);
    pattern.push('%');
    for c in query.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r13_patterns_escape_wildcards_and_keep_case() {
        assert_eq!(like_substring("50%_A"), "%50\\%\\_A%");
        assert_eq!(like_substring("ΣΑΣ"), "%ΣΑΣ%");
        assert_eq!(like_substring("a\\b"), "%a\\\\b%");
    }
}
