"""Message handling shared by send and gateway: ids, content rules, frames, pure delivery logic."""
