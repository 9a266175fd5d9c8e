
a€Ð•ÿ¼1-€Ð•ÿ¼1	
skuA1R
Viewed Item
navigation"
tier
gold2
emailu1@example.com