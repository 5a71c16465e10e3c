"""linecam.grdnet"""
