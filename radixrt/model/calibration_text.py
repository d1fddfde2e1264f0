"""A fixed, varied text that int8 smoothing measures activation ranges on (``smoothing.py``).

Kept in the package so that the measurement never depends on a download or on the Python
version; a mix of the kinds of input a chat model serves: narrative, explanation, steps,
dialogue, code, data, numbers and a little French and Spanish. Not the text that
``bench/accuracy.py`` scores.
"""

CALIBRATION_TEXT = """\
The lighthouse keeper had not seen a ship in eleven days. Every evening he climbed the ninety-two \
steps, wiped the salt from the great lens, and lit the lamp, although the sea beyond the rocks \
stayed empty and grey. On the twelfth morning a small boat with a patched red sail appeared near \
the northern reef. A girl of about fourteen was rowing against the tide, and she waved both arms \
when she saw him standing on the gallery. "My father's engine failed," she called. "We have been \
drifting since Tuesday." He lowered the rope ladder, put the kettle on, and began to ask questions.

Why is the sky blue? Sunlight contains every visible wavelength. When it passes through the \
atmosphere, it meets nitrogen and oxygen molecules that are much smaller than the wavelength of \
light. These molecules scatter short wavelengths far more strongly than long ones; the effect \
grows with the inverse fourth power of the wavelength, so blue light is scattered about five \
times more than red. Looking anywhere except at the sun, we see this scattered light, which is \
mostly blue. At sunset the light crosses much more air, most of the blue is scattered away \
before it reaches us, and the remaining reds and oranges dominate the sky.

How to replace a bicycle inner tube:
1. Shift to the smallest rear cog, open the brake, and remove the wheel.
2. Push the valve into the rim and use two tyre levers to lift one side of the tyre off.
3. Pull out the old tube and run your fingers carefully around the inside of the tyre to find \
thorns or glass.
4. Inflate the new tube slightly so that it holds its shape, insert the valve, and tuck the tube \
into the tyre.
5. Work the bead back over the rim with your thumbs, check that the tube is not pinched, and \
pump to the pressure printed on the sidewall (usually 4 to 7 bar for road tyres).

User: Can you recommend a book for a long train journey?
Assistant: Sure! If you enjoy mysteries, "The Moonstone" by Wilkie Collins is a classic that \
keeps you guessing. For something lighter, try a collection of short stories, so you can stop \
at any station without losing the thread. What kinds of books have you liked before?
User: I liked "Project Hail Mary" a lot.
Assistant: Then you might enjoy "The Martian" by the same author, or "A Memory Called Empire", \
which mixes politics, language and space travel.

def merge_intervals(intervals):
    \"\"\"Merge overlapping [start, end] intervals and return them sorted.\"\"\"
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged

print(merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]))  # [[1, 6], [8, 10], [15, 18]]

SELECT c.name, COUNT(o.id) AS orders, SUM(o.total) AS revenue
FROM customers AS c JOIN orders AS o ON o.customer_id = c.id
WHERE o.created_at >= '2024-01-01'
GROUP BY c.name ORDER BY revenue DESC LIMIT 10;

{"id": 4127, "title": "Quarterly report", "tags": ["finance", "internal"], "draft": false,
 "authors": [{"name": "Ana Lima", "email": "ana@example.org"}], "pages": 38, "score": 0.87}

The meeting is moved from Thursday 14 March at 10:30 to Friday 15 March at 09:00 in room B-204. \
The budget for the second quarter is $1,250,000, an increase of 3.5% over last year; travel costs \
fell by 12% while software licences rose from 84,000 to 97,500 euros.

Le train pour Lyon part à huit heures du quai numéro trois. N'oubliez pas de composter votre \
billet avant de monter. El mercado abre todos los días excepto los lunes, y los sábados hay \
música en la plaza desde las seis de la tarde.

In summary, good documentation answers three questions: what does this do, how do I use it, and \
what happens when something goes wrong? Short examples help more than long descriptions, and an \
example that can be copied and run is worth more than either.
"""
