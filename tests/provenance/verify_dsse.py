"""An independent check of runner's provenance: securesystemslib (PyPI) verifies the DSSE
envelope with the ed25519 public key, and the payload must be an in-toto Statement v1 with
an SLSA Provenance v1 predicate. usage: verify_dsse.py ENVELOPE PUBKEY_HEX; exit 0 = valid."""
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def main(envelope_path, key_hex):
    key = SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)))
    with open(envelope_path) as f:
        envelope = Envelope.from_dict(json.loads(f.readline()))
    envelope.verify([key], threshold=1)  # raises unless a signature by this key holds
    statement = json.loads(envelope.payload)
    assert envelope.payload_type == "application/vnd.in-toto+json", envelope.payload_type
    assert statement["_type"] == "https://in-toto.io/Statement/v1", statement["_type"]
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert all(s["digest"]["sha256"] for s in statement["subject"])
    assert statement["predicate"]["runDetails"]["builder"]["id"]
    print(f"verified by securesystemslib: keyid {key.keyid}, {len(statement['subject'])} subjects")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except Exception as e:
        print(f"FAIL {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
