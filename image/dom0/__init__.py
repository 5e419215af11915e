"""The programs of the Xen tier's test dom0 (image/xenhost.py builds them into its initramfs).

They run inside the dom0, on the product's Python 3.11, stdlib only, as the package
`image.dom0` under /opt/dom0; the host imports only `xlcfg` and `control` (the pure parts).
"""
