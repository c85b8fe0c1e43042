//! Sans-IO multipart arithmetic: how an object splits into fixed-size parts, and which
//! parts a resumed upload may keep (crash-safety invariant 4: after a restart the store is
//! asked with ListParts before anything is sent).

use super::s3::ListedPart;
use crate::index::DonePart;

/// Number of parts of an object of `size` bytes (at least one).
pub fn part_count(size: u64, part_size: u64) -> u32 {
    size.div_ceil(part_size).max(1) as u32
}

/// Byte range `[start, end)` of part `number` (1-based).
pub fn part_range(size: u64, part_size: u64, number: u32) -> (u64, u64) {
    let start = u64::from(number - 1) * part_size;
    (start, (start + part_size).min(size))
}

fn unquote(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// Whether two ETags name the same content (quotes are optional in answers).
pub fn same_etag(a: &str, b: &str) -> bool {
    unquote(a).eq_ignore_ascii_case(unquote(b))
}

/// What a resumed upload does with each part.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResumePlan {
    /// Parts the store holds as we sent them: not sent again.
    pub keep: Vec<DonePart>,
    /// Parts to send, ascending. For each, the store's listed ETag if it has one we did
    /// not record (the process died between the PUT and its commit): the sender compares
    /// it with the local part's MD5 and skips the PUT on a match.
    pub send: Vec<(u32, Option<String>)>,
}

/// Matches our committed parts against the store's listing. A committed part is kept only
/// if the store lists it with the expected size and (when it lists ETags) the same ETag.
pub fn plan_resume(
    size: u64,
    part_size: u64,
    committed: &[DonePart],
    listed: &[ListedPart],
) -> ResumePlan {
    let mut plan = ResumePlan::default();
    for number in 1..=part_count(size, part_size) {
        let (start, end) = part_range(size, part_size, number);
        let expected = end - start;
        let in_store = listed
            .iter()
            .find(|p| p.number == number && p.size == expected);
        let ours = committed
            .iter()
            .find(|p| p.number == number && p.size == expected);
        match (ours, in_store) {
            (Some(ours), Some(theirs))
                if theirs
                    .etag
                    .as_deref()
                    .is_none_or(|e| same_etag(e, &ours.etag)) =>
            {
                plan.keep.push(ours.clone())
            }
            (_, Some(theirs)) => plan.send.push((number, theirs.etag.clone())),
            (_, None) => plan.send.push((number, None)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn done(number: u32, size: u64, etag: &str) -> DonePart {
        DonePart {
            number,
            size,
            etag: etag.into(),
        }
    }

    fn listed(number: u32, size: u64, etag: Option<&str>) -> ListedPart {
        ListedPart {
            number,
            size,
            etag: etag.map(str::to_owned),
        }
    }

    #[test]
    fn parts_cover_the_object() {
        assert_eq!(part_count(0, 8 * MB), 1);
        assert_eq!(part_count(8 * MB, 8 * MB), 1);
        assert_eq!(part_count(8 * MB + 1, 8 * MB), 2);
        assert_eq!(part_range(20 * MB, 8 * MB, 3), (16 * MB, 20 * MB));
    }

    #[test]
    fn keeps_only_parts_the_store_confirms() {
        let size = 20 * MB;
        let committed = [done(1, 8 * MB, "\"a\""), done(2, 8 * MB, "\"b\"")];
        // Store lists part 1 with our ETag, part 2 with another ETag, and part 3 which we
        // never committed (died after its PUT).
        let store = [
            listed(1, 8 * MB, Some("a")),
            listed(2, 8 * MB, Some("\"zz\"")),
            listed(3, 4 * MB, Some("\"c\"")),
        ];
        let plan = plan_resume(size, 8 * MB, &committed, &store);
        assert_eq!(plan.keep, vec![committed[0].clone()]);
        assert_eq!(
            plan.send,
            vec![(2, Some("\"zz\"".into())), (3, Some("\"c\"".into()))]
        );
    }

    #[test]
    fn stores_without_etags_trust_committed_ones() {
        let committed = [done(1, 8 * MB, "\"a\""), done(2, 8 * MB, "\"b\"")];
        let store = [listed(1, 8 * MB, None)];
        let plan = plan_resume(24 * MB, 8 * MB, &committed, &store);
        assert_eq!(plan.keep, vec![committed[0].clone()]);
        assert_eq!(plan.send, vec![(2, None), (3, None)]);
    }

    #[test]
    fn a_wrong_size_is_never_kept() {
        let committed = [done(1, 8 * MB, "\"a\"")];
        let store = [listed(1, 7 * MB, Some("\"a\""))];
        let plan = plan_resume(16 * MB, 8 * MB, &committed, &store);
        assert!(plan.keep.is_empty());
        assert_eq!(plan.send, vec![(1, None), (2, None)]);
    }
}
