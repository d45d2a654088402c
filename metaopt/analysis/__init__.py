"""CKA (centered kernel alignment) between layer representations, and the figures of the CKA study."""
