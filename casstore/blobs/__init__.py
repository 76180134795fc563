"""The blob store: blobs encoded one by one, gathered into packs, located through indexes."""
