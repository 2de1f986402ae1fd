//! What one push may cost: the limits the codecs enforce while they parse, so that a
//! hostile body is refused before it has been turned into more memory than it took on
//! the wire (see "What a request may cost" in the README).
//!
//! The parsers count as they go: a series, a label, a bucket or a family over its limit
//! stops the parse at once, instead of being found when the whole body has been
//! decoded into structs that take tens of times its size.

/// Default `--push.max-label-name-bytes`: real label names are identifiers of a few
/// dozen bytes.
pub const DEFAULT_MAX_LABEL_NAME_BYTES: usize = 1024;
/// Default `--push.max-label-value-bytes`: room for URLs, build strings and error
/// texts, far from what makes every line of a scrape carry a payload.
pub const DEFAULT_MAX_LABEL_VALUE_BYTES: usize = 16 * 1024;
/// Default `--push.max-buckets-per-series`: classic histograms have a few dozen
/// buckets; native ones, sent as spans and deltas, up to 160 per side by default in
/// client_golang.
pub const DEFAULT_MAX_BUCKETS_PER_SERIES: usize = 1024;
/// Default `--push.max-grouping-key-bytes`: the names and decoded values of the
/// grouping labels of one URL; `job` and `instance` are short.
pub const DEFAULT_MAX_GROUPING_KEY_BYTES: usize = 4096;
/// Default `--push.max-render-factor`: how many bytes the rendered exposition of a push
/// may take per byte of its request. Every line of the exposition repeats its series'
/// labels (and the grouping labels), so a long label on a series with many buckets, or
/// a long grouping label over many series, renders into far more than it took to send.
/// Ordinary pushes render into 1 to 4 times their size.
pub const DEFAULT_MAX_RENDER_FACTOR: usize = 16;
/// Rendered bytes a push may always take, whatever its size: small pushes with a
/// grouping key render into many times their few bytes and cost nothing.
pub const RENDER_FLOOR_BYTES: usize = 1024 * 1024;

/// The limits of one push, enforced while its body is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushLimits {
    /// Series in one push (`--push.max-series-per-push`); families count too, so a
    /// body of family headers without samples is bounded as well.
    pub max_series: usize,
    /// Labels of one series in the body (`--push.max-labels-per-series`; the
    /// grouping labels are added and counted once the URL is known).
    pub max_labels_per_series: usize,
    /// Bytes of one label name.
    pub max_label_name_bytes: usize,
    /// Bytes of one label value.
    pub max_label_value_bytes: usize,
    /// Buckets, quantiles or native-histogram spans/deltas/counts of one series.
    pub max_buckets_per_series: usize,
    /// Bytes the decoded structs of a protobuf body may take per byte of the body
    /// (`--push.max-render-factor`; never less than [`RENDER_FLOOR_BYTES`]).
    pub max_decoded_factor: usize,
}

impl PushLimits {
    /// No limit at all: for re-parsing what the gateway wrote itself.
    pub const UNLIMITED: Self = Self {
        max_series: usize::MAX,
        max_labels_per_series: usize::MAX,
        max_label_name_bytes: usize::MAX,
        max_label_value_bytes: usize::MAX,
        max_buckets_per_series: usize::MAX,
        max_decoded_factor: usize::MAX,
    };

    pub(crate) fn check_decoded(&self, decoded: usize, body: usize) -> Result<(), LimitError> {
        let budget = body
            .saturating_mul(self.max_decoded_factor)
            .max(RENDER_FLOOR_BYTES);
        if decoded > budget {
            return Err(LimitError::DecodesTooLarge {
                decoded,
                body,
                factor: self.max_decoded_factor,
            });
        }
        Ok(())
    }

    pub(crate) fn check_series(&self, count: usize) -> Result<(), LimitError> {
        if count > self.max_series {
            return Err(LimitError::TooManySeries {
                count,
                limit: self.max_series,
            });
        }
        Ok(())
    }

    pub(crate) fn check_labels(&self, family: &str, count: usize) -> Result<(), LimitError> {
        if count > self.max_labels_per_series {
            return Err(LimitError::TooManyLabels {
                family: family.to_owned(),
                count,
                limit: self.max_labels_per_series,
            });
        }
        Ok(())
    }

    pub(crate) fn check_label_name(&self, family: &str, len: usize) -> Result<(), LimitError> {
        if len > self.max_label_name_bytes {
            return Err(LimitError::LabelNameTooLong {
                family: family.to_owned(),
                len,
                limit: self.max_label_name_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn check_label_value(&self, family: &str, len: usize) -> Result<(), LimitError> {
        if len > self.max_label_value_bytes {
            return Err(LimitError::LabelValueTooLong {
                family: family.to_owned(),
                len,
                limit: self.max_label_value_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn check_buckets(&self, family: &str, count: usize) -> Result<(), LimitError> {
        if count > self.max_buckets_per_series {
            return Err(LimitError::TooManyBuckets {
                family: family.to_owned(),
                count,
                limit: self.max_buckets_per_series,
            });
        }
        Ok(())
    }
}

/// A push over one of its limits (answered 400; the store is not touched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// More series (or families) than `--push.max-series-per-push`.
    #[error("the push has at least {count} series (or families), more than the gateway's limit of {limit}; split it into several groups, or raise --push.max-series-per-push")]
    TooManySeries {
        /// Series counted when parsing stopped.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A series with more labels than `--push.max-labels-per-series`.
    #[error("a series of {family:?} has at least {count} labels, more than the gateway's limit of {limit}; drop labels, or raise --push.max-labels-per-series")]
    TooManyLabels {
        /// The family of the series.
        family: String,
        /// Labels counted when parsing stopped.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A label name longer than `--push.max-label-name-bytes`.
    #[error("a label name of {family:?} is {len} bytes long, more than the gateway's limit of {limit}; shorten it, or raise --push.max-label-name-bytes")]
    LabelNameTooLong {
        /// The family of the series.
        family: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A label value longer than `--push.max-label-value-bytes`.
    #[error("a label value of {family:?} is {len} bytes long, more than the gateway's limit of {limit}; shorten it, or raise --push.max-label-value-bytes")]
    LabelValueTooLong {
        /// The family of the series.
        family: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// More buckets or quantiles in one series than `--push.max-buckets-per-series`.
    #[error("a series of {family:?} has at least {count} buckets or quantiles, more than the gateway's limit of {limit}; use fewer, or raise --push.max-buckets-per-series")]
    TooManyBuckets {
        /// The family of the series.
        family: String,
        /// Buckets counted when parsing stopped.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The grouping labels of the URL are longer than `--push.max-grouping-key-bytes`.
    #[error("the grouping key of the URL is {len} bytes long (names and decoded values), more than the gateway's limit of {limit}; use shorter grouping labels, or raise --push.max-grouping-key-bytes")]
    GroupingKeyTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A compressed body inflates to more than `--push.max-render-factor` times its
    /// size on the wire (answered 413, like a body over the size limit).
    #[error("the {encoding} body of {body} bytes inflates to more than {factor} times its size; send it uncompressed or less repetitive, or raise --push.max-render-factor")]
    Inflates {
        /// The `Content-Encoding`.
        encoding: String,
        /// Its size on the wire.
        body: usize,
        /// The factor.
        factor: usize,
    },
    /// A protobuf body would decode into more than `--push.max-render-factor` times its
    /// size (empty metrics: 2 bytes on the wire, a whole struct decoded).
    #[error("the protobuf body would decode into at least {decoded} bytes, more than {factor} times its {body} bytes; push fewer, fuller metrics, or raise --push.max-render-factor")]
    DecodesTooLarge {
        /// The estimated decoded size so far.
        decoded: usize,
        /// The (decompressed) body's size.
        body: usize,
        /// The factor.
        factor: usize,
    },
    /// The push would render into more bytes than `--push.max-render-factor` times its
    /// request.
    #[error("the push would take at least {rendered} bytes in the exposition (every line repeats its series' labels and the grouping labels), more than {factor} times its {request} bytes; use shorter labels, fewer buckets or series per push, or raise --push.max-render-factor")]
    TooCostly {
        /// The estimated rendered size.
        rendered: usize,
        /// The request's size: URL and body on the wire.
        request: usize,
        /// The factor.
        factor: usize,
    },
}
