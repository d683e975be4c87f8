//! Reading a user's input file (a trace, a webhooks or checks list, a
//! token): bounded in size, so that `/dev/zero`, a FIFO or a log file given
//! by mistake is an error rather than all the memory, and without a UTF-8
//! byte-order mark, which editors on some systems write and which no
//! format here means anything by.

use std::io::Read;
use std::path::Path;

/// The largest trace file read (a day of one line per second is ~10 MiB).
pub const MAX_TRACE_BYTES: u64 = 256 * 1024 * 1024;

/// The largest settings file read (webhooks, checks, tokens).
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

/// The bytes of `path`, at most `limit` of them (a certificate, a key).
/// The error names the file and says what is wrong.
pub fn read_bytes(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{} is larger than {}; is it the file you meant?",
            path.display(),
            shown_size(limit)
        ));
    }
    Ok(bytes)
}

/// The bytes of a file whose name a setting gives where a secret may have
/// been pasted by mistake (`bearer_token_file: eyJ…`, `--token-file`):
/// like [`read_bytes`], but no error names the file, so a secret written
/// in place of its path never reaches a terminal, a log or an Event.
pub fn read_secret_file(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let unreadable = |e: std::io::Error| {
        format!(
            "cannot read the file it names ({e}); is the secret itself written there? Give the path of a file holding it"
        )
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "the file it names is larger than {}; is it the file you meant?",
            shown_size(limit)
        ));
    }
    Ok(bytes)
}

/// [`read_secret_file`] as UTF-8 text, less a leading byte-order mark.
pub fn read_secret_text(path: &Path, limit: u64) -> Result<String, String> {
    let text = String::from_utf8(read_secret_file(path, limit)?)
        .map_err(|_| "the file it names is not UTF-8 text".to_string())?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// A size limit as people read it.
fn shown_size(limit: u64) -> String {
    if limit >= 1024 * 1024 {
        format!("{} MiB", limit / (1024 * 1024))
    } else {
        format!("{limit} bytes")
    }
}

/// The text of `path`, at most `limit` bytes of UTF-8, less a leading
/// byte-order mark. The error names the file and says what is wrong.
pub fn read_text(path: &Path, limit: u64) -> Result<String, String> {
    let bytes = read_bytes(path, limit)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| format!("{} is not UTF-8 text: {e}", path.display()))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_bounded_and_without_its_byte_order_mark() {
        let dir = std::env::temp_dir().join(format!("sluice-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bom = dir.join("bom.yaml");
        std::fs::write(&bom, "\u{feff}- name: x\n").unwrap();
        assert_eq!(read_text(&bom, 100).unwrap(), "- name: x\n");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 101]).unwrap();
        assert!(read_text(&big, 100).unwrap_err().contains("larger than"));
        assert_eq!(read_text(&big, 101).unwrap().len(), 101);
        // An endless stream stops at the limit.
        let err = read_text(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(err.contains("/dev/zero is larger than"), "{err}");
        let latin1 = dir.join("latin1");
        std::fs::write(&latin1, b"caf\xe9").unwrap();
        assert!(read_text(&latin1, 100).unwrap_err().contains("not UTF-8"));
        assert!(
            read_text(&dir.join("missing"), 100)
                .unwrap_err()
                .contains("cannot read")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A secret pasted where a file's name goes is never echoed.
    #[test]
    fn a_secret_files_errors_never_name_it() {
        let pasted = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0";
        for err in [
            read_secret_file(Path::new(pasted), 100).unwrap_err(),
            read_secret_text(Path::new(pasted), 100).unwrap_err(),
        ] {
            assert!(err.starts_with("cannot read the file it names"), "{err}");
            assert!(!err.contains(pasted), "{err}");
        }
        assert!(
            read_secret_text(Path::new("/dev/zero"), 64)
                .unwrap_err()
                .contains("larger than 64 bytes")
        );
    }
}
