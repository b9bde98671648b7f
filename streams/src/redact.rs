//! Placeholder until the validation branch lands: keeps nothing.
pub fn contract_fields(_payload: &[u8]) -> Option<Vec<u8>> {
    None
}
