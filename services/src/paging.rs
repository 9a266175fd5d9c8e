//! Pages of the List calls: a page size with its default and its limit, and a page token that
//! is the key of the previous page's last item (the next page starts after it). Pure logic.

use tonic::Status;

/// One page asked for: at most `size` items, after the item keyed `after` (from the first
/// without).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Page<K> {
    pub size: usize,
    pub after: Option<K>,
}

/// The page a request asks for: a size of 0 is `default`, one above `max` is refused, and a
/// token that is not one of `call`'s is refused; both errors name what was wrong.
pub fn page<K: std::str::FromStr>(
    call: &str,
    size: u32,
    token: &str,
    default: usize,
    max: usize,
) -> Result<Page<K>, Status> {
    let size = match size as usize {
        0 => default,
        n if n > max => {
            return Err(Status::invalid_argument(format!(
                "page_size {n} is above the limit of {max} per page of {call}"
            )))
        }
        n => n,
    };
    let after =
        match token.trim() {
            "" => None,
            token => Some(token.parse::<K>().map_err(|_| {
                Status::invalid_argument(format!("page_token: not a token of {call}"))
            })?),
        };
    Ok(Page { size, after })
}

/// The key of an event tier in its list's order: (event type, name), as a page token
/// `type/name` (event types hold no `/`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TierKey(pub String, pub String);

impl std::fmt::Display for TierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

impl std::str::FromStr for TierKey {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (event_type, name) = s.split_once('/').ok_or(())?;
        Ok(TierKey(event_type.into(), name.into()))
    }
}

/// The lists' page sizes: without a size, and the most one page holds.
pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 1_000;

/// The page of `items` (in `key` order) that `page` asks for, and the token of the next.
pub fn take<T, K: PartialOrd + ToString>(
    items: Vec<T>,
    page: &Page<K>,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, String) {
    let mut items: Vec<T> = items
        .into_iter()
        .filter(|item| page.after.as_ref().is_none_or(|after| key(item) > *after))
        .collect();
    let next = cut(&mut items, page.size, key);
    (items, next)
}

/// Cuts `items` (in key order, read one past the page to know whether another follows) to
/// `size`; the token of the next page, empty after the last.
pub fn cut<T, K: ToString>(items: &mut Vec<T>, size: usize, key: impl Fn(&T) -> K) -> String {
    if items.len() <= size {
        return String::new();
    }
    items.truncate(size);
    items
        .last()
        .map(|item| key(item).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_reads_back_whole_page_by_page() {
        let items: Vec<u64> = (1..=7).collect();
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (page, next) = take(items.clone(), &Page { size: 3, after }, |i| *i);
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            after = Some(next.parse().unwrap());
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn sizes_default_and_are_bounded_and_tokens_are_checked() {
        let p: Page<u64> = page("ListAudiences", 0, "", 500, 1_000).unwrap();
        assert_eq!(
            p,
            Page {
                size: 500,
                after: None
            }
        );
        let p: Page<u64> = page("ListAudiences", 2, "41", 500, 1_000).unwrap();
        assert_eq!(
            p,
            Page {
                size: 2,
                after: Some(41)
            }
        );
        let e = page::<u64>("ListAudiences", 1_001, "", 500, 1_000).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("limit of 1000"), "{}", e.message());
        let e = page::<u64>("ListAudiences", 1, "x", 500, 1_000).unwrap_err();
        assert!(e.message().contains("ListAudiences"), "{}", e.message());
    }

    #[test]
    fn a_page_read_one_past_its_size_gives_the_next_token() {
        let mut items = vec![1, 2, 3];
        assert_eq!(cut(&mut items, 2, |i| *i), "2");
        assert_eq!(items, [1, 2]);
        let mut last = vec![3];
        assert_eq!(cut(&mut last, 2, |i| *i), "");
    }
}
