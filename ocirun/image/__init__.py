"""Bundles from images (`ocirun bundle`): read an OCI image layout or a docker-archive
(source), apply its layers safely (layer), keep them once in a content-addressed store
shared by bundles (store), and write the bundle with a config.json converted from the
image config (bundle).  None of this is on the path of the lifecycle commands: the
only thing `create` needs from here is rootfs.mount_overlay_root, which reads the
bundle's annotation.
"""
