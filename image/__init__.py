"""natvm's host side: fetch the pinned packages, write the initramfs, the deployment files and
the QEMU command line. It copies `appliance/` into the image and never imports it.
"""
