-- One database per region (each region's Strata captures its own).
CREATE DATABASE claims_us_east;
CREATE DATABASE claims_eu_west;
