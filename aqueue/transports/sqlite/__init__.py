"""SQLite: the file, its connections and thread, shared by the ``sqlite://`` broker and backend."""
