"""Flusher: write-behind of messages and delivery cursors from the fast store to SQL, in batches."""
