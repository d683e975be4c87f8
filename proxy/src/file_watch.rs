//! Which file-system events are worth re-reading a watched file for (the
//! config file, the TLS certificates): anything that may have changed its
//! content, not a mere read.

/// Whether a file-system event can have changed a file's content: a
/// create, write, rename or removal. Opening and reading (which the watcher
/// itself does) are not, or every read would trigger the next.
pub fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    ) && !matches!(
        event.kind,
        EventKind::Modify(notify::event::ModifyKind::Metadata(
            notify::event::MetadataKind::AccessTime
        ))
    )
}
