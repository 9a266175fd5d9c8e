//! Version bytes of the outbox's and the dead letters' rows, and the framing of rows written
//! before they had one. Every stored row opens with its format, so that a field added later
//! reads the rows already retained instead of failing them. Rows of the stores, changelog units
//! (format [`crate::changelog::LEGACY_CHANGELOG_FORMAT`]) and snapshots (format 1) written
//! before the byte are framed when met: at open, when a unit is applied, when a snapshot is
//! loaded.

/// Version byte of a stored delta (then postcard of [`crate::model::Delta`]).
pub(crate) const DELTA_FORMAT: u8 = 1;

/// Version byte of a stored dead letter (then postcard of [`crate::store::DeadLetter`]).
pub(crate) const LETTER_FORMAT: u8 = 1;

/// The row of an unframed store in column family `cf`, framed (`None`: rows of `cf` were
/// never unframed). The names are the store's (`store/db.rs`): this file imports nothing, so that the store and the changelog both read it.
pub(crate) fn frame_legacy_row(cf: &str, value: &[u8]) -> Option<Vec<u8>> {
    let format = match cf {
        "outbox" => DELTA_FORMAT,
        "deadletters" => LETTER_FORMAT,
        _ => return None,
    };
    let mut framed = Vec::with_capacity(value.len() + 1);
    framed.push(format);
    framed.extend_from_slice(value);
    Some(framed)
}

/// The body of a row of `format`, or why it is not one.
pub(crate) fn unframe<'a>(what: &str, format: u8, bytes: &'a [u8]) -> Result<&'a [u8], String> {
    match bytes.split_first() {
        Some((&f, body)) if f == format => Ok(body),
        Some((f, _)) => Err(format!(
            "{what} of format {f}, this version reads format {format}"
        )),
        None => Err(format!("empty {what} row")),
    }
}
