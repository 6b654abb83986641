//! The listener's certificate, read from its PEM files: at start, and again at every SIGHUP
//! (a renewed certificate goes into new handshakes; a bad one is refused and the old one stays).

use std::path::Path;

use clarion_engine::tls::certified_key;
use clarion_engine::tls::rustls::sign::CertifiedKey;

/// Reads the certificate chain at `cert` and its key at `key`, checked to belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    certified_key(&read(cert)?, &read(key)?)
        .map_err(|e| format!("TLS {} / {}: {e}", cert.display(), key.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/engine/tests/tls")
            .join(name)
    }

    #[test]
    fn a_chain_and_its_key_load_and_anything_else_says_which_file_is_wrong() {
        let key = load(&fixture("chain.pem"), &fixture("key.pem")).unwrap();
        assert_eq!(key.cert.len(), 2);
        let err = load(&fixture("missing.pem"), &fixture("key.pem")).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let err = load(&fixture("cert.pem"), &fixture("other-key.pem")).unwrap_err();
        assert!(err.contains("does not belong"), "{err}");
    }
}
