//! Store semantics: PUT/POST/DELETE, push gauges, the check against other groups.
