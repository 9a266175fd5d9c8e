//! Output secrets sealed for the catalog topic: webhook tokens and Kafka credentials travel
//! and rest encrypted with a key every node of a cluster has in its configuration, so that
//! nobody who can read the topic can read them (cluster step 1, item 5).
//!
//! A sealed value is `sealed:v1:` then hex of a random 12-byte nonce and the ChaCha20-Poly1305
//! ciphertext with its tag. The secret's name is the associated data: a sealed value moved to
//! another name does not open.
//!
//! Invariants: [`open`] gives back exactly what [`seal`] was given, with the same key and
//! name, and refuses anything else (another key, another name, altered bytes); sealing the
//! same value twice gives two different texts (fresh nonces).

use crate::outputs::{OutputConfig, REDACTED};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// What starts a sealed value, with the format's version.
pub const SEALED_PREFIX: &str = "sealed:v1:";
const NONCE_BYTES: usize = 12;

/// The key that seals secrets: 32 bytes, the same on every node of a cluster.
#[derive(Clone)]
pub struct SecretKey(Key);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A key never reaches a log.
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Reads a key written as 64 hex digits (`openssl rand -hex 32` makes one).
    pub fn from_hex(text: &str) -> Result<SecretKey, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|e| format!("the secret key is not hex: {e} (give 64 hex digits)"))?;
        if bytes.len() != 32 {
            return Err(format!(
                "the secret key has {} bytes: give 32 (64 hex digits, `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        Ok(SecretKey(*Key::from_slice(&bytes)))
    }

    /// A new random key (a single node's own, when none is configured).
    pub fn generate() -> SecretKey {
        let bytes: [u8; 32] = rand::random();
        SecretKey(*Key::from_slice(&bytes))
    }

    /// The key as 64 hex digits, as [`SecretKey::from_hex`] reads it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_slice())
    }
}

/// Seals a secret's value under its name.
pub fn seal(key: &SecretKey, name: &str, value: &str) -> String {
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let sealed = ChaCha20Poly1305::new(&key.0)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: value.as_bytes(),
                aad: name.as_bytes(),
            },
        )
        .expect("sealing a string in memory cannot fail");
    let mut bytes = nonce.to_vec();
    bytes.extend(sealed);
    format!("{SEALED_PREFIX}{}", hex::encode(bytes))
}

/// Opens a sealed secret; the error says why it does not open (never what it holds).
pub fn open(key: &SecretKey, name: &str, sealed: &str) -> Result<String, String> {
    let body = sealed
        .strip_prefix(SEALED_PREFIX)
        .ok_or_else(|| format!("secret {name} is not sealed ({SEALED_PREFIX}...)"))?;
    let bytes =
        hex::decode(body).map_err(|_| format!("secret {name}: the sealed text is not hex"))?;
    if bytes.len() < NONCE_BYTES {
        return Err(format!("secret {name}: the sealed text is too short"));
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    let plain = ChaCha20Poly1305::new(&key.0)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| {
            format!(
                "secret {name} does not open: sealed with another key (is every node's secret \
                 key the same?) or altered"
            )
        })?;
    String::from_utf8(plain).map_err(|_| format!("secret {name}: not UTF-8 once opened"))
}

/// The output with every secret sealed (values shown redacted stay as they are: they stand for
/// the stored value and are resolved when applied).
pub fn seal_output(key: &SecretKey, output: &OutputConfig) -> OutputConfig {
    let mut sealed = output.clone();
    for (name, value) in sealed.secrets.iter_mut() {
        if value != REDACTED && !value.starts_with(SEALED_PREFIX) {
            *value = seal(key, name, value);
        }
    }
    sealed
}

/// The output with every sealed secret opened.
pub fn open_output(key: &SecretKey, output: &OutputConfig) -> Result<OutputConfig, String> {
    let mut opened = output.clone();
    for (name, value) in opened.secrets.iter_mut() {
        if value.starts_with(SEALED_PREFIX) {
            *value = open(key, name, value)?;
        }
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_hex(&hex::encode([byte; 32])).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_name_only() {
        let sealed = seal(&key(1), "authorization", "Bearer t0ken");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("t0ken"));
        assert_ne!(
            sealed,
            seal(&key(1), "authorization", "Bearer t0ken"),
            "fresh nonces"
        );
        assert_eq!(
            open(&key(1), "authorization", &sealed).as_deref(),
            Ok("Bearer t0ken")
        );
        let other_key = open(&key(2), "authorization", &sealed).unwrap_err();
        assert!(other_key.contains("another key"), "{other_key}");
        assert!(
            open(&key(1), "sasl.password", &sealed).is_err(),
            "bound to its name"
        );
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        assert!(open(
            &key(1),
            "authorization",
            &String::from_utf8(altered).unwrap()
        )
        .is_err());
        assert!(open(&key(1), "authorization", "plain")
            .unwrap_err()
            .contains("not sealed"));
    }

    #[test]
    fn keys_are_64_hex_digits() {
        assert!(SecretKey::from_hex("zz").unwrap_err().contains("not hex"));
        assert!(SecretKey::from_hex("abcd")
            .unwrap_err()
            .contains("has 2 bytes"));
        assert_eq!(format!("{:?}", key(7)), "SecretKey(..)");
    }

    #[test]
    fn outputs_seal_their_secrets_and_keep_redacted_ones() {
        let output: OutputConfig = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "hook", "kind": "webhook",
            "settings": {"url": "https://example.com/hook"},
            "secrets": {"Authorization": "Bearer abc", "X-Kept": REDACTED},
            "accepted_identities": ["email"]
        }))
        .unwrap();
        let sealed = seal_output(&key(3), &output);
        assert!(sealed.secrets["Authorization"].starts_with(SEALED_PREFIX));
        assert_eq!(sealed.secrets["X-Kept"], REDACTED);
        assert!(!serde_json::to_string(&sealed)
            .unwrap()
            .contains("Bearer abc"));
        assert_eq!(
            seal_output(&key(3), &sealed),
            sealed,
            "sealing twice changes nothing"
        );
        assert_eq!(open_output(&key(3), &sealed), Ok(output));
        assert!(open_output(&key(4), &sealed).is_err());
    }
}
