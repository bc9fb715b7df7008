//! Just enough X.509 to check a client assertion: PEM → DER, the certificate's
//! SHA-256 thumbprint (`x5t#S256`) and its RSA public key.
//!
//! A full X.509 parser would be a new dependency for a development tool; the
//! simulator only needs to walk `Certificate → tbsCertificate →
//! subjectPublicKeyInfo`, which is a few lines of DER.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::ThumbprintHash;

/// One registered certificate, ready to verify assertions.
#[derive(Clone, Debug)]
pub(crate) struct ClientCertificate {
    /// base64url (no padding) of SHA-256 over the DER certificate.
    pub thumbprint_s256: String,
    /// PKCS#1 `RSAPublicKey` DER.
    rsa_public_key: Vec<u8>,
}

impl ClientCertificate {
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_rsa_der(&self.rsa_public_key)
    }
}

/// Why a certificate PEM was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CertificateError {
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("CERTIFICATE block is not valid base64")]
    Base64,
    #[error("malformed DER: {0}")]
    Der(&'static str),
    #[error("the certificate's key is not an RSA key (only RS256/PS256 assertions are supported)")]
    NotRsa,
}

/// Every `CERTIFICATE` block in `pem` (other blocks are skipped).
pub(crate) fn parse_certificates(pem: &str) -> Result<Vec<ClientCertificate>, CertificateError> {
    let mut certificates = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match &mut body {
            None if line == "-----BEGIN CERTIFICATE-----" => body = Some(String::new()),
            None => {}
            Some(text) if line == "-----END CERTIFICATE-----" => {
                let der = STANDARD
                    .decode(text.as_bytes())
                    .map_err(|_| CertificateError::Base64)?;
                certificates.push(parse_der_certificate(&der)?);
                body = None;
            }
            Some(text) => text.push_str(line),
        }
    }
    if certificates.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    Ok(certificates)
}

/// base64url (no padding) SHA-256 of `der`, as in the `x5t#S256` header.
pub(crate) fn thumbprint_s256(der: &[u8]) -> String {
    let digest = (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
        .jwk_utils
        .compute_digest)(der, ThumbprintHash::SHA256);
    URL_SAFE_NO_PAD.encode(digest)
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OBJECT_IDENTIFIER: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed
/// 1.2.840.113549.1.1.1 (rsaEncryption), content octets.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

fn parse_der_certificate(der: &[u8]) -> Result<ClientCertificate, CertificateError> {
    let (certificate, rest) = read_element(der)?;
    if certificate.tag != TAG_SEQUENCE || !rest.is_empty() {
        return Err(CertificateError::Der("certificate is not one SEQUENCE"));
    }
    let (tbs, _) = read_element(certificate.content)?;
    expect_tag(&tbs, TAG_SEQUENCE, "tbsCertificate")?;

    let mut fields = tbs.content;
    let (mut field, mut rest) = read_element(fields)?;
    if field.tag == TAG_VERSION {
        (field, rest) = read_element(rest)?;
    }
    expect_tag(&field, TAG_INTEGER, "serialNumber")?;
    fields = rest;
    // signature, issuer, validity, subject
    for name in ["signature", "issuer", "validity", "subject"] {
        let (skipped, rest) = read_element(fields)?;
        expect_tag(&skipped, TAG_SEQUENCE, name)?;
        fields = rest;
    }
    let (spki, _) = read_element(fields)?;
    expect_tag(&spki, TAG_SEQUENCE, "subjectPublicKeyInfo")?;

    let (algorithm, rest) = read_element(spki.content)?;
    expect_tag(&algorithm, TAG_SEQUENCE, "algorithm")?;
    let (oid, _) = read_element(algorithm.content)?;
    expect_tag(&oid, TAG_OBJECT_IDENTIFIER, "algorithm OID")?;
    if oid.content != OID_RSA_ENCRYPTION {
        return Err(CertificateError::NotRsa);
    }
    let (key_bits, _) = read_element(rest)?;
    expect_tag(&key_bits, TAG_BIT_STRING, "subjectPublicKey")?;
    let Some((&0, rsa_public_key)) = key_bits.content.split_first() else {
        return Err(CertificateError::Der("subjectPublicKey has unused bits"));
    };
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    let (key, _) = read_element(rsa_public_key)?;
    expect_tag(&key, TAG_SEQUENCE, "RSAPublicKey")?;
    let (modulus, rest) = read_element(key.content)?;
    expect_tag(&modulus, TAG_INTEGER, "modulus")?;
    let (exponent, _) = read_element(rest)?;
    expect_tag(&exponent, TAG_INTEGER, "publicExponent")?;

    Ok(ClientCertificate {
        thumbprint_s256: thumbprint_s256(der),
        rsa_public_key: rsa_public_key.to_vec(),
    })
}

struct Element<'a> {
    tag: u8,
    content: &'a [u8],
}

fn expect_tag(element: &Element<'_>, tag: u8, name: &'static str) -> Result<(), CertificateError> {
    if element.tag == tag {
        Ok(())
    } else {
        Err(CertificateError::Der(name))
    }
}

/// One DER TLV (single-byte tags, definite lengths up to 4 bytes) and the rest.
fn read_element(input: &[u8]) -> Result<(Element<'_>, &[u8]), CertificateError> {
    let [tag, first_length, rest @ ..] = input else {
        return Err(CertificateError::Der("truncated element"));
    };
    if tag & 0x1f == 0x1f {
        return Err(CertificateError::Der("multi-byte tag"));
    }
    let (length, rest) = match *first_length {
        short @ 0..=0x7f => (usize::from(short), rest),
        long @ 0x81..=0x84 => {
            let count = usize::from(long & 0x7f);
            if rest.len() < count {
                return Err(CertificateError::Der("truncated length"));
            }
            let (bytes, rest) = rest.split_at(count);
            let length = bytes
                .iter()
                .fold(0_usize, |length, byte| (length << 8) | usize::from(*byte));
            (length, rest)
        }
        _ => return Err(CertificateError::Der("unsupported length")),
    };
    if rest.len() < length {
        return Err(CertificateError::Der("truncated content"));
    }
    let (content, rest) = rest.split_at(length);
    Ok((Element { tag: *tag, content }, rest))
}

#[cfg(test)]
pub(crate) mod test_material {
    //! Throw-away key pairs generated for these tests only (openssl req -x509).
    pub const CLIENT_CERTIFICATE: &str = include_str!("testdata/client.cert.pem");
    pub const CLIENT_KEY: &str = include_str!("testdata/client.key.pem");
    pub const OTHER_CERTIFICATE: &str = include_str!("testdata/other.cert.pem");
    pub const OTHER_KEY: &str = include_str!("testdata/other.key.pem");
    pub const EC_CERTIFICATE: &str = include_str!("testdata/ec.cert.pem");
    /// `openssl x509 -outform DER | openssl dgst -sha256 -binary | basenc --base64url`
    pub const CLIENT_THUMBPRINT: &str = "81LeRwpM0iD_OgzZJXV1Dz4oqiVfn4EgEJ2dWW5x1SY";
    pub const OTHER_THUMBPRINT: &str = "3bupihdLDuTvucnr4m5MRvHJ9Xct43w6LVoBCy_muv4";
}

#[cfg(test)]
mod tests {
    use super::test_material::*;
    use super::*;

    #[test]
    fn thumbprint_matches_openssl() {
        let certificates = parse_certificates(CLIENT_CERTIFICATE).unwrap();
        assert_eq!(certificates.len(), 1);
        assert_eq!(certificates[0].thumbprint_s256, CLIENT_THUMBPRINT);
    }

    #[test]
    fn private_key_blocks_are_skipped_and_bundles_give_every_certificate() {
        let bundle = format!("{CLIENT_KEY}\n{CLIENT_CERTIFICATE}\n{OTHER_CERTIFICATE}");
        let thumbprints: Vec<_> = parse_certificates(&bundle)
            .unwrap()
            .into_iter()
            .map(|certificate| certificate.thumbprint_s256)
            .collect();
        assert_eq!(thumbprints, [CLIENT_THUMBPRINT, OTHER_THUMBPRINT]);
    }

    #[test]
    fn extracted_key_verifies_a_signature_of_the_matching_private_key() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
        let key = EncodingKey::from_rsa_pem(CLIENT_KEY.as_bytes()).unwrap();
        let claims = serde_json::json!({"sub": "x"});
        for algorithm in [Algorithm::RS256, Algorithm::PS256] {
            let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap();
            let mut validation = Validation::new(algorithm);
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_aud = false;
            let certificate = &parse_certificates(CLIENT_CERTIFICATE).unwrap()[0];
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &certificate.decoding_key(),
                &validation,
            )
            .unwrap();
            let other = &parse_certificates(OTHER_CERTIFICATE).unwrap()[0];
            assert!(
                jsonwebtoken::decode::<serde_json::Value>(
                    &token,
                    &other.decoding_key(),
                    &validation
                )
                .is_err()
            );
        }
    }

    #[test]
    fn non_rsa_and_garbage_are_refused() {
        assert_eq!(
            parse_certificates(EC_CERTIFICATE).unwrap_err(),
            CertificateError::NotRsa
        );
        assert_eq!(
            parse_certificates(CLIENT_KEY).unwrap_err(),
            CertificateError::NoCertificate
        );
        assert_eq!(
            parse_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----")
                .unwrap_err(),
            CertificateError::Base64
        );
        assert!(matches!(
            parse_certificates("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----"),
            Err(CertificateError::Der(_))
        ));
    }
}
